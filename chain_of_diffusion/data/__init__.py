"""Image sets, real data sources and pixel transforms."""
