"""The Pod Security Standards' "restricted" profile (baseline + restricted controls, version
latest), checked field by field on a pod spec: what the admission plugin would refuse on a
cluster that enforces it (k8s-local's 1.20 does not).
https://kubernetes.io/docs/concepts/security/pod-security-standards/"""

ALLOWED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                        "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
SECCOMP_ALLOWED = {"RuntimeDefault", "Localhost"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t",
                 "container_engine_t"}


def restricted_violations(pod: dict) -> list[str]:
    """Every way `pod` (a PodSpec as a dict) breaks the restricted profile; [] when it holds."""
    problems = []
    context = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"pod: {field} is true")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds)} not allowed")
    for sysctl in context.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"pod: sysctl {sysctl['name']} not allowed")
    problems += _selinux("pod", context)
    problems += _windows_host_process("pod", context)
    if context.get("runAsUser") == 0:
        problems.append("pod: runAsUser 0")
    pod_seccomp = (context.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_ALLOWED:
        problems.append(f"pod: seccompProfile {pod_seccomp}")
    containers = [("container", c) for c in pod.get("containers") or []]
    containers += [("initContainer", c) for c in pod.get("initContainers") or []]
    containers += [("ephemeralContainer", c) for c in pod.get("ephemeralContainers") or []]
    if not containers:
        problems.append("pod: no containers")
    for kind, container in containers:
        problems += _container(f"{kind} {container.get('name')}", container, context)
    return problems


def _container(where: str, container: dict, pod_context: dict) -> list[str]:
    problems = []
    context = container.get("securityContext") or {}
    if context.get("privileged"):
        problems.append(f"{where}: privileged")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation is not false")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append(f"{where}: capabilities do not drop ALL")
    added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
    if added:
        problems.append(f"{where}: adds capabilities {sorted(added)}")
    run_as_non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
    if run_as_non_root is not True:
        problems.append(f"{where}: runAsNonRoot is not true (neither container nor pod)")
    if context.get("runAsUser") == 0:
        problems.append(f"{where}: runAsUser 0")
    seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
    if seccomp not in SECCOMP_ALLOWED:
        problems.append(f"{where}: seccompProfile {seccomp} (RuntimeDefault or Localhost needed)")
    if context.get("procMount", "Default") != "Default":
        problems.append(f"{where}: procMount {context['procMount']}")
    for port in container.get("ports") or []:
        if port.get("hostPort"):
            problems.append(f"{where}: hostPort {port['hostPort']}")
    problems += _selinux(where, context)
    problems += _windows_host_process(where, context)
    apparmor = (context.get("appArmorProfile") or {}).get("type")
    if apparmor not in (None, "RuntimeDefault", "Localhost"):
        problems.append(f"{where}: appArmorProfile {apparmor}")
    return problems


def _selinux(where: str, context: dict) -> list[str]:
    options = context.get("seLinuxOptions") or {}
    problems = []
    if options.get("type", "") not in SELINUX_TYPES:
        problems.append(f"{where}: seLinuxOptions.type {options['type']}")
    for field in ("user", "role"):
        if options.get(field):
            problems.append(f"{where}: seLinuxOptions.{field} set")
    return problems


def _windows_host_process(where: str, context: dict) -> list[str]:
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        return [f"{where}: windowsOptions.hostProcess"]
    return []


def pod_specs(manifests: list[dict]) -> dict[str, dict]:
    """'Kind/name' -> the pod spec of every workload among `manifests`."""
    specs = {}
    for manifest in manifests:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        if kind == "Pod":
            specs[f"{kind}/{name}"] = manifest["spec"]
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            specs[f"{kind}/{name}"] = manifest["spec"]["template"]["spec"]
        elif kind == "CronJob":
            specs[f"{kind}/{name}"] = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return specs
