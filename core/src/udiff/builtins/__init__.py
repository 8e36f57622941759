"""udiff's own components, registered as ordinary (``trylast``) plugins."""
