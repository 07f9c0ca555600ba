"""The policy models, re-exported: the schema lives in `tandem.model.policies`, shared with the gateway.

The AMS has no policy rule of its own beyond that schema; the checks across
the policies of a project are in `tandem.ams.models.Project`. Import from
`tandem.model.policies` in new code.
"""

from __future__ import annotations

from tandem.model.policies import (
    AUTH_TYPES,
    HEADER_NAME,
    HTTP_METHOD,
    IDEMPOTENT_METHODS,
    POLICY_MODELS,
    POLICY_TYPES,
    PROTECTED_REQUEST_HEADERS,
    PROTECTED_RESPONSE_HEADERS,
    UNIT_SECONDS,
    ApiKeyPolicy,
    BasicAuthPolicy,
    CachePolicy,
    CorsPolicy,
    DeliveryPolicy,
    FieldError,
    HeaderName,
    HeaderValue,
    IpFilterPolicy,
    JwtPolicy,
    Policy,
    PolicyModel,
    QuotaPolicy,
    RateLimitPolicy,
    RequestHeadersPolicy,
    ResponseHeadersPolicy,
    RetryPolicy,
    TimeoutPolicy,
    parse_policy,
)

__all__ = [
    "AUTH_TYPES", "HEADER_NAME", "HTTP_METHOD", "IDEMPOTENT_METHODS", "POLICY_MODELS", "POLICY_TYPES",
    "PROTECTED_REQUEST_HEADERS", "PROTECTED_RESPONSE_HEADERS", "UNIT_SECONDS", "ApiKeyPolicy", "BasicAuthPolicy",
    "CachePolicy", "CorsPolicy", "DeliveryPolicy", "FieldError", "HeaderName", "HeaderValue", "IpFilterPolicy",
    "JwtPolicy", "Policy", "PolicyModel", "QuotaPolicy", "RateLimitPolicy", "RequestHeadersPolicy",
    "ResponseHeadersPolicy", "RetryPolicy", "TimeoutPolicy", "parse_policy",
]
