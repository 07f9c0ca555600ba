"""Model check of the pair: two servers, one LockFile, one clock (ms), driving the REAL `decide`. Each node
mirrors `HAController` (start, observe, run_cycle), `Actions` (act, _claim), `Holding` (claim, _gone, release;
the verify/read, heartbeat and cycle loops); the world is the POSIX lock owner, the LockFile record and the FAULTS below."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tandem.ha.decide import Action, Observations, decide
from tandem.ha.states import HOLDING, SERVING, State

RETRY, VERIFY, IO, TAKEOVER, HEARTBEAT, PEER_DEAD, WATCHDOG = 50, 150, 100, 300, 100, 300, 1500
FENCE, NEVER = VERIFY + IO, -math.inf  # the self-fence deadline (LockWatch.fence)
TIE_BREAK = "secondary at start: the primary has the first try"
Record = tuple[int, int | None, frozenset[int]]  # the LockFile record: epoch, holder, in_sync


class Node:  # one server process as HAController.start() leaves it
    def __init__(self, pair: Pair, name: int, alive: bool = True) -> None:
        self.name, self.alive, self.state, t0 = name, alive, State.STARTING, pair.t
        self.holds = self.stolen = False  # lock.held (our belief); the lease was lost under us
        self.claimed = self.lock_lost = self.client_open = self.isolated = self.skip_wait = False
        self.passive_syncing = self.peer_syncing = False
        self.last_verified = self.heard_at = NEVER
        self.acquired_at: float | None = None
        self.paused_at: int | None = None  # SIGSTOPped at
        self.handover: int | None = None  # the epoch the peer announced it released
        self.peer_view = ("?", 0, False)  # the peer's last heartbeat: state, epoch, serving
        self.next_attempt = self.next_verify = self.next_heartbeat = float(t0)
        self.store_open = pair.mode == "replicated"
        self.hold_off_until, self.hold_off_reason = (t0 + 2.0 * PEER_DEAD, TIE_BREAK) if name else (NEVER, "")
        self.rec: Record = (0, None, frozenset()) if pair.hung else pair.file  # lock.record
        self.epoch = self.rec[0]  # the highest epoch known


class Pair:
    def __init__(self, mode: str) -> None:
        self.mode, self.t, self.hung, self.heartbeats_ok = mode, 0, False, True
        self.owner: int | None = None  # whose POSIX lock the share holds
        self.file: Record = (0, None, frozenset())
        self.nodes = [Node(self, 0), Node(self, 1)]
        self.stolen_at, self.max_served = [NEVER, NEVER], [0, 0]
        self.served_by: dict[int, int] = {}  # epoch -> the one node that served with it

    def serving(self, nd: Node) -> bool:  # controller.serving
        return (nd.alive and nd.state in SERVING and nd.client_open and nd.holds and nd.claimed
                and self.t - nd.last_verified <= FENCE)

    def observe(self, nd: Node) -> Observations:  # controller.observe
        t, (_, peer_epoch, peer_serving), (epoch, holder, in_sync) = self.t, nd.peer_view, nd.rec
        peer_alive = t - nd.heard_at <= PEER_DEAD
        return Observations(
            mode=self.mode, state=nd.state, holds_lock=nd.holds,
            lock_fresh=nd.holds and nd.claimed and t - nd.last_verified <= FENCE, lock_lost=nd.lock_lost,
            takeover_elapsed=nd.acquired_at is not None and (nd.skip_wait or t - nd.acquired_at >= TAKEOVER),
            client_open=nd.client_open, peer_alive=peer_alive, isolated=nd.isolated,
            may_activate=self.mode == "shared" or epoch == 0 or nd.name in in_sync or (not in_sync and holder == nd.name),
            hold_off=nd.hold_off_reason if t < nd.hold_off_until else None, retry_due=t >= nd.next_attempt,
            passive_syncing=nd.passive_syncing, peer_syncing=nd.peer_syncing,
            peer_serving_higher_epoch=peer_alive and peer_serving and peer_epoch > epoch and nd.claimed,
            store_open=nd.store_open)

    def tick(self, n: int, dt: int) -> None:  # dt ms pass; node n's loops run if due (ha/pace.every)
        self.t += dt
        for other in self.nodes:  # the supervisor's watchdog kills a stopped process
            if other.alive and other.paused_at is not None and self.t - other.paused_at > WATCHDOG:
                self.fault(other.name, "kill -9")
        nd = self.nodes[n]
        if nd.alive and nd.paused_at is None:
            if self.t >= nd.next_verify:
                nd.next_verify = self.t if nd.next_verify < self.t - 2 * VERIFY else nd.next_verify + VERIFY
                self.verify(nd)
            if self.t >= nd.next_heartbeat:
                nd.next_heartbeat = self.t if nd.next_heartbeat < self.t - 2 * HEARTBEAT else nd.next_heartbeat + HEARTBEAT
                self.heartbeat(nd)
            self.cycle(nd)
            if nd.holds and not nd.claimed:  # a lock attempt succeeded and woke the cycle: claim at once
                self.cycle(nd)
        self.check()

    def verify(self, nd: Node) -> None:  # LockWatch (verifier thread, record reads) + LockFile.verify / read
        if self.hung:
            return  # timed out: nothing learnt, last_verified stays
        if not nd.holds and self.mode == "replicated" and nd.state not in HOLDING:  # rule 5: are we in sync?
            nd.rec, nd.epoch = self.file, max(nd.epoch, self.file[0])
        elif nd.holds and nd.claimed and self.owner == nd.name:
            nd.last_verified = self.t
        elif nd.holds and nd.claimed and self.file[:2] != (nd.rec[0], nd.name):
            nd.lock_lost = True  # the record names someone else now
        # else: the lease is gone but the record is still ours: EIO, the check did not finish

    def heartbeat(self, nd: Node) -> None:  # controller._heartbeat_tick + endpoints._heartbeat + controller.peer_news
        peer = self.nodes[1 - nd.name]
        if not self.heartbeats_ok or peer.paused_at is not None:
            return  # timeout
        if not peer.alive:  # nothing listens on its HA port: connection refused
            return
        for a, b in ((peer, nd), (nd, peer)):
            a.peer_view, a.heard_at, a.epoch = (str(b.state), b.epoch, self.serving(b)), self.t, max(a.epoch, b.epoch)
            a.hold_off_until = NEVER if self.serving(b) and a.hold_off_reason == TIE_BREAK else a.hold_off_until

    def cycle(self, nd: Node) -> None:  # controller.run_cycle
        d = decide(self.observe(nd))  # raises IllegalTransition on an edge not in the table
        assert not (nd.isolated and {Action.TRY_ACQUIRE, Action.CLAIM, Action.OPEN_CLIENT} & set(d.actions))
        for action in d.actions:
            self.act(nd, action)
            if action in (Action.CLAIM, Action.OPEN_STORE, Action.OPEN_CLIENT) and not nd.holds:
                break
        if d.state != nd.state and (nd.holds or d.state not in HOLDING):
            nd.state = d.state
        assert not nd.client_open or self.serving(nd), f"node {nd.name} left its port open at t={self.t}"
        nd.peer_syncing &= nd.state in SERVING  # the replicator hears on_state(): it stops streaming
        nd.passive_syncing &= nd.state not in HOLDING

    def act(self, nd: Node, a: Action) -> None:  # actions.Actions.act
        if a is Action.TRY_ACQUIRE:
            nd.next_attempt = self.t + RETRY
            if not self.hung:
                nd.rec, nd.epoch = self.file, max(nd.epoch, self.file[0])
                if self.owner is None:
                    self.owner, nd.holds = nd.name, True
        elif a is Action.CLAIM:
            self.claim(nd)
        elif a is Action.RELEASE_LOCK:
            released, peer = nd.rec[0] if nd.claimed else None, self.nodes[1 - nd.name]
            self.release(nd)
            if released is not None and self.heartbeats_ok and peer.alive and peer.paused_at is None:
                peer.handover, peer.hold_off_until, peer.next_attempt = released, NEVER, NEVER  # controller.peer_released
        else:  # open/close the client port or the store
            setattr(nd, "client_open" if "client" in a else "store_open", a.startswith("open"))

    def claim(self, nd: Node) -> None:  # Actions._claim + Holding.claim + Holding._gone
        before, holder, in_sync = self.file
        if self.hung or nd.stolen:
            return self.abort(nd)
        assert nd.rec[0] == before, "a claim from a stale read"
        assert self.mode == "shared" or before == 0 or nd.name in in_sync or (not in_sync and holder == nd.name)
        epoch = max(before, nd.epoch) + 1
        self.file = nd.rec = (epoch, nd.name, frozenset({nd.name}))
        nd.claimed, nd.lock_lost, nd.last_verified, nd.acquired_at = True, False, self.t, self.t
        # Holding._gone + Holding._probe_old_holder: a refusal counts only if observed after our
        # acquisition, i.e. the previous holder's process is gone *now* (a paused one still listens)
        nd.skip_wait = (nd.handover == before or (before == 0 and holder is None)
                        or (holder == 1 - nd.name and nd.heard_at > NEVER and not self.nodes[holder].alive))
        nd.handover, nd.epoch = None, epoch
        old, wait = self.nodes[1 - nd.name], 0 if nd.skip_wait else TAKEOVER  # we serve after its self-fence
        assert not (old.holds and old.claimed) or old.last_verified + FENCE < self.t + wait, \
            f"node {nd.name} claims at t={self.t} (skip_wait={nd.skip_wait}) while node {old.name} may serve"

    def release(self, nd: Node) -> None:  # Holding.release
        self.owner = None if self.owner == nd.name else self.owner
        nd.holds = nd.stolen = nd.claimed = nd.lock_lost = nd.skip_wait = False
        nd.acquired_at, nd.next_attempt = None, self.t + RETRY
        if self.t >= nd.hold_off_until:
            nd.hold_off_until, nd.hold_off_reason = self.t + 1000, "just stepped down"

    def abort(self, nd: Node) -> None:  # a failed activation step: decided again with activation_failed
        nd.client_open, nd.store_open = False, nd.store_open and self.mode != "shared"
        self.release(nd)
        nd.hold_off_until, nd.hold_off_reason = self.t + 3000, "backing off after a failed activation"

    def fault(self, n: int, what: str) -> None:  # see FAULTS
        nd, peer = self.nodes[n], self.nodes[1 - n]
        if what == "kill -9":  # the kernel drops a dead process's POSIX locks
            self.owner, self.nodes[n] = None if self.owner == n else self.owner, Node(self, n, alive=False)
        elif what == "restart" and not nd.alive:
            self.nodes[n] = Node(self, n)
        elif what in ("SIGSTOP", "SIGCONT") and nd.alive:
            nd.paused_at = (self.t if nd.paused_at is None else nd.paused_at) if what == "SIGSTOP" else None
        elif what == "lease stolen" and self.owner == n:  # NFS lease expiry: the node still believes it holds
            self.owner, nd.stolen, self.stolen_at[n] = None, True, self.t
        elif what in ("isolated", "probe ok"):
            nd.isolated = what == "isolated"
        elif what.startswith("heartbeats"):
            self.heartbeats_ok = what == "heartbeats ok"
        elif what.startswith("share"):
            self.hung = what == "share hung"
        elif what in ("catching up", "caught up") and self.mode == "replicated" and self.serving(nd) \
                and self.t - nd.heard_at <= PEER_DEAD:  # the active streams to the peer, then records it in sync
            nd.peer_syncing = what == "catching up"
            peer.passive_syncing = nd.peer_syncing and peer.state not in HOLDING | {State.STARTING}
            if not nd.peer_syncing and not self.hung and not nd.stolen:  # LockFile.set_in_sync
                self.file = nd.rec = (nd.rec[0], n, frozenset({n, 1 - n}))

    def check(self) -> None:  # the invariants, after every step
        on = [nd for nd in self.nodes if self.serving(nd)]
        assert len(on) <= 1, f"both serve at t={self.t}"
        for nd in on:
            assert self.owner == nd.name or self.t - self.stolen_at[nd.name] <= FENCE, \
                f"node {nd.name} serves at t={self.t} without the lock (stolen at {self.stolen_at[nd.name]})"
            assert nd.rec[0] >= self.max_served[nd.name], f"node {nd.name} serves with a lower epoch {nd.rec[0]}"
            self.max_served[nd.name] = nd.rec[0]
            assert self.served_by.setdefault(nd.rec[0], nd.name) == nd.name, f"two servers in epoch {nd.rec[0]}"
        for nd in self.nodes:
            assert not nd.client_open or nd.state in SERVING, f"node {nd.name} port open in {nd.state}"
            assert nd.state not in HOLDING or nd.holds, f"node {nd.name} is {nd.state} without the lock"

    def run(self, until: float, step: int = 25, lead: int = 0) -> list[tuple[int, bool, bool]]:  # both nodes
        hist = []
        while self.t < until:
            self.tick(lead, step)
            self.tick(1 - lead, 0)
            hist.append((self.t, self.serving(self.nodes[0]), self.serving(self.nodes[1])))
        return hist


NODE = st.integers(0, 1)
FAULTS = ["kill -9", "restart", "SIGSTOP", "SIGCONT", "lease stolen", "isolated", "probe ok", "heartbeats lost",
          "heartbeats ok", "share hung", "share ok", "catching up", "caught up"]  # to node n, or the world


class SharedPair(RuleBasedStateMachine):
    mode = "shared"

    @initialize(ms=st.integers(0, 1200))
    def start(self, ms: int) -> None:
        self.pair = Pair(self.mode)
        self.pair.run(ms)

    @rule(n=NODE, dt=st.integers(0, 200))
    def tick(self, n: int, dt: int) -> None:  # one node at a time: the adversarial scheduler
        self.pair.tick(n, dt)

    @rule(ms=st.integers(0, 600), step=st.sampled_from([5, 25, 60]), lead=NODE)
    def run(self, ms: int, step: int, lead: int) -> None:  # both nodes at a steady pace
        self.pair.run(self.pair.t + ms, step, lead)

    @rule(n=NODE, what=st.sampled_from(FAULTS))
    def fault(self, n: int, what: str) -> None:
        self.pair.fault(n, what)

    @invariant()
    def safe(self) -> None:
        self.pair.check()


class ReplicatedPair(SharedPair):
    mode = "replicated"


TestSharedPair, TestReplicatedPair = SharedPair.TestCase, ReplicatedPair.TestCase
TestSharedPair.settings = TestReplicatedPair.settings = settings(max_examples=300, stateful_step_count=60,
                                                                 deadline=None)


def _steal_right_after_a_verification(p: Pair) -> float:  # the worst moment for node 1 to take the lock
    p.run(p.nodes[0].next_verify, 5)
    p.fault(0, "lease stolen")
    p.nodes[1].next_attempt = p.t
    p.tick(1, 0)
    return p.nodes[0].last_verified


@pytest.mark.parametrize(("mode", "in_sync", "then"), [("shared", False, State.ACTIVE), (
    "replicated", True, State.STANDALONE), ("replicated", False, State.WAITING)], ids=["shared", "in-sync", "not"])
def test_kill9_of_the_active_the_peer_takes_over_unless_rule5(mode: str, in_sync: bool, then: State) -> None:
    p = Pair(mode)
    p.run(1000)
    assert p.nodes[0].state == State.ACTIVE and p.serving(p.nodes[0])
    if in_sync:
        p.fault(0, "caught up")
    p.fault(0, "kill -9")
    served = [t for t, _, on1 in p.run(2500, 5) if on1]
    assert p.nodes[1].state == then
    if then == State.WAITING:  # rule 5: its store may miss acknowledged writes
        assert not served
    else:
        assert 1000 < served[0] <= 1000 + RETRY + TAKEOVER + 10 and p.file[:2] == (2, 1)


def test_lease_stolen_right_after_a_verification_old_stops_before_new_starts() -> None:
    p = Pair("shared")
    p.run(1000)
    verified = _steal_right_after_a_verification(p)
    old, new = p.nodes
    assert p.serving(old) and new.state == State.ACTIVATING and new.acquired_at == verified == p.t
    old.paused_at = p.t  # stopped: it cannot notice, only its self-fence deadline ends its serving
    hist = p.run(p.t + 1000, 5)
    last_old, first_new = max(t for t, on0, _ in hist if on0), min(t for t, _, on1 in hist if on1)
    assert last_old <= verified + FENCE < verified + TAKEOVER <= first_new


def test_a_stale_refusal_never_skips_the_takeover_wait() -> None:
    # node 1 saw node 0's HA port refuse (kill -9); node 0 restarted and, the backchannel down, took the
    # lock unheard by node 1. When node 0's lease is stolen, node 1 must still wait out its fence.
    p = Pair("shared")
    p.run(1000)
    p.fault(0, "kill -9")
    p.run(1500)  # node 1 sees the refusal and takes over at once
    p.heartbeats_ok, p.nodes[0], p.nodes[1].isolated = False, Node(p, 0), True
    p.run(1600)  # node 1 steps down; node 0 takes the lock
    p.nodes[1].isolated = False
    assert not any(on1 for _, _, on1 in p.run(2800)) and p.serving(p.nodes[0])
    _steal_right_after_a_verification(p)  # claim() asserts node 1 waits out node 0's fence:
    p.run(p.t + 1000, 5)  # the refusal seen before node 0 restarted proves nothing now
