"""The Qt GUI: widgets that show state and drive `core` jobs on worker threads."""
