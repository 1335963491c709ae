"""meddeblur: remove blur from medical images, dermoscopic photographs first."""

__version__ = "0.1.0"
