"""Operator tools (`genjobs` command: replay, stats, dev, token, migrate); never deployed.

Nothing the functions import may import this package (tests/unit/test_deployed_imports.py),
and Terraform leaves it out of their source archive (infra/locals.tf).
"""
