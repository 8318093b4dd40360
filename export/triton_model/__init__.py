"""The python-backend model template that ``export.publish`` copies into each published version."""
