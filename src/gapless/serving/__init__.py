"""``gapless serve``: Python web apps served with a drain that loses nothing.

Named ``serving``, not ``serve``: importing a subpackage binds its name on the
parent, and ``gapless.serve`` is the public function (:func:`gapless.serving.api.serve`).
"""
