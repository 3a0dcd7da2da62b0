"""fedcollab."""
