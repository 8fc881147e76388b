"""Inference backends. One protocol (`base.Backend`); the module name is the config `kind`."""
