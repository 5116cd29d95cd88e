"""The explainer's front end without an HTTP server: its API answered in process
(:mod:`~convlens.offline.bridge`), its page as one file (:mod:`~convlens.offline.page`), and a
self-contained export (:mod:`~convlens.offline.export`). The notebook widget
(:mod:`convlens.notebook`) is built from the same parts."""
