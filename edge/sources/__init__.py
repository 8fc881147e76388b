"""Frame sources. One protocol (`base.Source`); the module name is the config `kind`."""
