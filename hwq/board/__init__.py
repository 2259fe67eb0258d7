"""Boards: their files, bitstreams, and the host driver that runs a package on one."""
