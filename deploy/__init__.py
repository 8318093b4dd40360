"""The deploy stage, after loadtests/: Kubernetes manifests (KServe or plain Triton, the router with an
HPA, Locust master and workers) rendered from the same configs the local stack uses, validated offline.

``python -m deploy k8s render ...`` / ``python -m deploy k8s validate DIR``; details in docs/operations.md.
"""
