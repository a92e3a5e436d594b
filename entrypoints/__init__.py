"""The composition root: the one CLI, the settings assembled from each package's sections, the servers.

It sits above `engine`, `labeler`, `training` and `ui` and is imported by none of them.
"""
