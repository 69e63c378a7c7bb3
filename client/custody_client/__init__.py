"""custody-client: what agents and resource servers use to talk to Custody."""

__version__ = "0.1.0"
