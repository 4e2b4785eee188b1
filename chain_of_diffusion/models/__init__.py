"""Building and loading the text-to-image model."""
