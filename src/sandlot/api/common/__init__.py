"""What every door shares: authentication (and the door-neutral request flow)."""
