"""``gapless serve``: Python web apps served with a drain that loses nothing."""
