"""The Kubernetes API calls the project's code makes, as RBAC sees them: a Role is checked
against the client methods a module calls (tests/test_detach.py, tests/test_deploy.py)."""

import re
from pathlib import Path

import yaml

# A client method -> (API group, resource, verb).
CALLS = {"create_namespaced_job": ("batch", "jobs", "create"),
         "list_namespaced_job": ("batch", "jobs", "list"),
         "delete_namespaced_job": ("batch", "jobs", "delete"),
         "delete_collection_namespaced_job": ("batch", "jobs", "deletecollection"),
         "read_namespaced_job_status": ("batch", "jobs/status", "get"),
         "list_namespaced_pod": ("", "pods", "list"),
         "read_namespaced_pod": ("", "pods", "get"),
         "delete_collection_namespaced_pod": ("", "pods", "deletecollection"),
         "read_namespaced_pod_log": ("", "pods/log", "get"),
         "create_namespaced_config_map": ("", "configmaps", "create"),
         "create_namespaced_secret": ("", "secrets", "create"),
         "delete_namespaced_secret": ("", "secrets", "delete"),
         "read_namespaced_service": ("", "services", "get"),
         "read_namespaced_endpoints": ("", "endpoints", "get")}


def calls_in(source: str) -> set[tuple[str, str, str]]:
    methods = set(re.findall(r"\.(\w+_namespaced_\w+)\(", source))
    unknown = methods - set(CALLS)
    assert not unknown, f"map these client methods to verbs: {unknown}"
    return {CALLS[method] for method in methods}


def granted(role_file: Path) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of a namespaced Role's rules."""
    role = yaml.safe_load(role_file.read_text())
    assert role["kind"] == "Role"  # namespaced, never a ClusterRole
    return {(group, resource, verb) for rule in role["rules"]
            for group in rule["apiGroups"] for resource in rule["resources"]
            for verb in rule["verbs"]}
