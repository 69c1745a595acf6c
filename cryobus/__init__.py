"""cryobus: event-driven data services for cryo-EM facilities."""
