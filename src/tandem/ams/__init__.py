"""API Management Server: the admin API (`app.py`), its domain services, and the
client service that serves it (`admin_service.py`, chosen by `tandem.composition`)."""
