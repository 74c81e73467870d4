"""`qadist select`: which logged pairs are worth a human label, and the round trip through Label Studio."""
