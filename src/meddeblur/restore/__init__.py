"""Restoration methods: what turns a blurred image (and, for most, its PSF) into a restored one."""
