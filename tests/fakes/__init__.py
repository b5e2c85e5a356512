"""Test doubles, importable from the repository root by tests and benchmarks alike.

``tests.fakes.kube_api``: a fake Kubernetes API server (list/watch, HTTP(S), faults) for the real
``kubernetes`` client. ``tests.fakes.upstream``: a scripted upstream DNS server.
"""
