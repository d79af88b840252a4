"""Security posture: safe deserialisation, no shells, loopback defaults, token auth, no secrets.

Fast: the package source is scanned with ``ast``, the cluster files are parsed or read as text,
and local.sh's settings-file writer is run in bash; one test starts the local Ray a command
starts (``init_ray``) to check its token auth. tests/test_cluster_configs.py covers the rest of
those files (schemas, versions, token wiring).
"""

from __future__ import annotations

import ast
import functools
import json
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from vilocal_dist.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "vilocal_dist"
CLUSTER = REPO_ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHERS = ("aws.yaml", "gcp.yaml")
LOOPBACK = ("127.0.0.1", "localhost")


# ----------------------------------------------------------------------------- source scans


@functools.lru_cache(maxsize=1)
def package_calls() -> tuple[tuple[str, ast.Call, str], ...]:
    """(``file:line``, call node, dotted callee such as ``torch.load``) for every call in the package.

    Names imported with ``from X import y [as z]`` resolve to ``X.y``; ``import X as Y`` to ``X``.
    """
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):  # `import a.b` binds a; `import a.b as c` binds c = a.b
                for a in node.names:
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module:
                aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = dotted(node.func, aliases)
                if name:
                    found.append((f"{path.relative_to(REPO_ROOT)}:{node.lineno}", node, name))
    return tuple(found)


def dotted(func: ast.expr, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    return ".".join([aliases.get(func.id, func.id), *reversed(parts)])


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_the_scanner_resolves_names_and_finds_calls() -> None:
    calls = {(where.split(":")[0], name) for where, _, name in package_calls()}
    assert ("vilocal_dist/engines/checkpoint.py", "torch.load") in calls
    assert ("vilocal_dist/config/files.py", "yaml.safe_load") in calls
    assert ("vilocal_dist/bench/suite.py", "subprocess.run") in calls
    tree = ast.parse("from torch import load as L\nL(p)\nimport yaml as Y\nY.full_load(s)")
    aliases = {"L": "torch.load", "Y": "yaml"}
    names = [dotted(n.func, aliases) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert names == ["torch.load", "yaml.full_load"]


def test_every_torch_load_is_weights_only() -> None:
    loads = [(where, call) for where, call, name in package_calls() if name in ("torch.load", "torch.serialization.load")]
    assert len(loads) >= 4  # checkpoints, VGG weights, IIVI and InterVI resumes
    offenders = [where for where, call in loads if not is_true(keyword(call, "weights_only"))]
    assert not offenders, f"torch.load without weights_only=True (arbitrary code on load): {offenders}"


UNSAFE_YAML = {"yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
               "yaml.full_load_all"}  # fmt: skip


def test_yaml_only_through_safe_load() -> None:
    calls = [(where, name) for where, _, name in package_calls() if name.startswith("yaml.")]
    assert any(name == "yaml.safe_load" for _, name in calls)
    offenders = [f"{where} {name}" for where, name in calls if name in UNSAFE_YAML]
    loaders = [
        f"{path.relative_to(REPO_ROOT)}: {m.group(0)}"
        for path in PACKAGE.rglob("*.py")
        for m in re.finditer(r"\b(?:Unsafe|Full)?Loader\b|\bUnsafeConstructor\b", path.read_text())
    ]
    assert not offenders and not loaders, f"YAML that can build arbitrary objects: {offenders + loaders}"


SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "pty.spawn"}
SUBPROCESS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call", "subprocess.check_output"}


def test_no_command_goes_through_a_shell() -> None:
    offenders = []
    for where, call, name in package_calls():
        if name in SHELL_CALLS:
            offenders.append(f"{where} {name}")
        elif name in SUBPROCESS:
            shell = keyword(call, "shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                offenders.append(f"{where} {name}(shell=...)")
            if call.args and isinstance(call.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
                offenders.append(f"{where} {name} with a command string, not an argument list")
    assert not offenders, f"commands through a shell: {offenders}"


def test_no_unsafe_deserialisation_or_eval() -> None:
    unsafe = {"pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "shelve.open", "dill.load",
              "dill.loads", "eval", "exec", "torch.jit.load"}  # fmt: skip
    offenders = [f"{where} {name}" for where, _, name in package_calls() if name in unsafe]
    offenders += [
        f"{where} {name}(allow_pickle=True)"
        for where, call, name in package_calls()
        if name in ("numpy.load", "np.load") and is_true(keyword(call, "allow_pickle"))
    ]
    assert not offenders, f"loading that can run code: {offenders}"


def test_code_never_binds_all_interfaces_and_ray_init_defaults_to_loopback() -> None:
    wildcard = [
        f"{path.relative_to(REPO_ROOT)}:{n}"
        for path in PACKAGE.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "0.0.0.0" in line or (re.search(r"mlflow (server|ui)\b", line) and "--host 127.0.0.1" not in line)
    ]
    assert not wildcard, f"servers the package starts or suggests bind loopback: {wildcard}"
    hosts = [
        f"{where} {name}({kw}=...)"
        for where, call, name in package_calls()
        for kw in ("dashboard_host", "host", "_node_ip_address")
        if (value := keyword(call, kw)) is not None
        and not (isinstance(value, ast.Constant) and value.value in LOOPBACK)
    ]
    assert not hosts, f"non-loopback hosts: {hosts}"
    import ray

    # init_ray and the tests start Ray without naming a dashboard host: Ray's default must be loopback.
    assert inspect.signature(ray.init).parameters["dashboard_host"].default in LOOPBACK


# ----------------------------------------------------------------------------- init_ray's local Ray

#: Run in a fresh interpreter (token settings are process-wide): start the local Ray as commands do,
#: then ask its job API with and without the token.
INIT_RAY_PROBE = """
import json, os, stat, urllib.error, urllib.request
import ray
from vilocal_dist.distributed.tuning import init_ray

init_ray(num_cpus=1)
path = os.environ["RAY_AUTH_TOKEN_PATH"]
url = "http://" + ray._private.worker.global_worker.node.webui_url + "/api/jobs/"
token = open(path).read().strip()

def status(headers):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code

print(json.dumps({"mode": os.environ["RAY_AUTH_MODE"], "path": path, "token_len": len(token),
                  "file_mode": stat.S_IMODE(os.stat(path).st_mode),
                  "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),
                  "without": status({}), "wrong": status({"Authorization": "Bearer " + "0" * 64}),
                  "with": status({"Authorization": "Bearer " + token})}))
ray.shutdown()
"""


@pytest.mark.ray
def test_local_ray_of_a_command_has_token_auth_with_its_own_private_token(tmp_path: Path) -> None:
    """As for cluster/local.sh: token auth, a fresh 256-bit token per local cluster in a 0600 file
    in a 0700 folder (not the user-wide ~/.ray/auth_token), removed when the command exits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", INIT_RAY_PROBE], env={**env, "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["mode"] == "token" and got["token_len"] == 64
    assert got["file_mode"] == 0o600 and got["dir_mode"] == 0o700
    assert got["without"] in (401, 403) and got["wrong"] in (401, 403) and got["with"] == 200, got
    assert not Path(got["path"]).exists(), "the token file outlived the command"
    assert not (tmp_path / ".ray" / "auth_token").exists(), "the user-wide token was written"


# ----------------------------------------------------------------------------- local.sh


def local_sh() -> str:
    return (CLUSTER / "local.sh").read_text()


def shell_function(script: str, name: str) -> str:
    match = re.search(rf"^{name}\(\) \{{\n.*?^\}}\n", script, re.S | re.M)
    assert match, f"no function {name} in local.sh"
    return match.group(0)


def test_local_services_bind_loopback_with_token_auth() -> None:
    ray_start = shell_function(local_sh(), "start_ray")
    assert re.search(r"--node-ip-address 127\.0\.0\.1\b", ray_start)
    assert re.search(r"--dashboard-host 127\.0\.0\.1\b", ray_start)
    assert "RAY_AUTH_MODE=token" in ray_start and 'RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"' in ray_start
    mlflow = shell_function(local_sh(), "start_mlflow")
    assert re.search(r"--host 127\.0\.0\.1\b", mlflow)
    assert '--allowed-hosts "127.0.0.1:$MLFLOW_PORT,localhost:$MLFLOW_PORT"' in mlflow
    start = shell_function(local_sh(), "cmd_start")
    assert 'chmod 700 "$STATE_DIR"' in start
    assert re.search(r"umask 077 && od -An -tx1 -N32 /dev/urandom .*>\"\$TOKEN_FILE\"", start)  # 256 random bits
    assert "0.0.0.0" not in local_sh()


def unquoted_expansions(script: str) -> list[tuple[int, str]]:
    """(line, text) of parameter and command expansions outside double quotes, where the shell
    would split and glob their value. Not flagged: assignments (``X=$y``, no splitting there),
    ``$((…))`` arithmetic, ``$!``/``$?``/``$#``/``$$``, the ``${a[@]+"${a[@]}"}`` idiom, heredoc
    bodies, comments, and the line after a ``# shellcheck disable=SC2086`` (splitting intended)."""
    found: list[tuple[int, str]] = []
    lines = script.split("\n")
    stack = ["code"]  # code | dq | sq | cmd (a $( … ) opened in code or dq)
    depth = [0]  # open plain parentheses per code/cmd level
    heredoc: str | None = None
    pending_heredoc: str | None = None
    skip_line = False
    for number, line in enumerate(lines, 1):
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if stack == ["code"] and line.strip().startswith("#"):
            skip_line = "shellcheck disable=SC2086" in line
            continue
        i = 0
        while i < len(line):
            c, top = line[i], stack[-1]
            if top == "sq":
                if c == "'":
                    stack.pop()
                i += 1
                continue
            if c == "\\":
                i += 2
                continue
            if top in ("code", "cmd") and c == "#" and (i == 0 or line[i - 1] in " \t;"):
                break  # a comment
            if top in ("code", "cmd") and line.startswith("<<", i):
                match = re.match(r"<<-?\s*['\"]?(\w+)", line[i:])
                if match:
                    pending_heredoc = match.group(1)
                    i += match.end()
                    continue
            if c == "'" and top in ("code", "cmd"):
                stack.append("sq")
            elif c == '"':
                if top == "dq":
                    stack.pop()
                else:
                    stack.append("dq")
            elif c == "$" and line.startswith("$((", i):
                close = line.find("))", i)
                i = close + 2 if close > 0 else len(line)
                continue
            elif c == "$" and line.startswith("$(", i):
                if top != "dq" and not is_assignment(line, i) and not skip_line:
                    found.append((number, line.strip()))
                stack.append("cmd")
                depth.append(0)
                i += 2
                continue
            elif c == "$" and top in ("code", "cmd") and i + 1 < len(line):
                rest = line[i:]
                if re.match(r"\$[!?#$]", rest) or re.match(r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}', rest):
                    i += 2
                    continue
                if re.match(r"\$[\w{@*]", rest) and not is_assignment(line, i) and not skip_line:
                    found.append((number, line.strip()))
            elif top in ("code", "cmd") and c == "(":
                depth[-1] += 1
            elif top in ("code", "cmd") and c == ")":
                if depth[-1] > 0:
                    depth[-1] -= 1
                elif top == "cmd":
                    stack.pop()
                    depth.pop()
            i += 1
        skip_line = False
        if pending_heredoc is not None and stack[-1] != "sq":
            heredoc, pending_heredoc = pending_heredoc, None
    return found


def is_assignment(line: str, at: int) -> bool:
    """Whether the expansion at ``line[at]`` is the value of ``NAME=`` (or ``local NAME=``)."""
    start = max(line.rfind(c, 0, at) for c in " \t;(") + 1
    return re.match(r"[A-Za-z_]\w*(\[[^]]*\])?\+?=", line[start:at]) is not None


def test_the_quoting_check_flags_what_it_should() -> None:
    bad = 'rm -rf $DIR\nx="$(cat "$f")" ; echo $(date)\nkill $pid "$ok"\ncp "$a" ${b}'
    assert [n for n, _ in unquoted_expansions(bad)] == [1, 2, 3, 4]
    good = ('X=$(cat "$f")\nlocal y=$HOME z=$((1 + $n))\necho "$a ${b:-c} $(d "$e")" $! $?\n'
            "awk '{ print $1 }'\n# shellcheck disable=SC2086\nkill $pids\ncat <<EOF\n$free text\nEOF\n"
            'ray start ${r[@]+"${r[@]}"}\ncase "$1" in *) ;; esac')  # fmt: skip
    assert unquoted_expansions(good) == []


def test_local_sh_quotes_its_variables() -> None:
    assert unquoted_expansions(local_sh()) == []


def test_local_sh_settings_file_survives_paths_with_spaces_and_shell_characters(tmp_path: Path) -> None:
    """Run local.sh's own writer of env.sh, then source the file it wrote."""
    odd = tmp_path / "a dir; with $(touch pwned) `x` 'q'"
    odd.mkdir()
    settings = {"STATE_DIR": odd, "RAY_TEMP_DIR": odd, "DASHBOARD_URL": "http://127.0.0.1:8265",
                "TOKEN_FILE": odd / "ray_auth_token", "MLFLOW_URL": "http://127.0.0.1:5000",
                "JOB_HOME": odd / "runs", "JOB_STORAGE": odd / "runs" / "ray"}  # fmt: skip
    (odd / "ray_current_cluster").write_text("10.0.0.7:6379")
    env = {"PATH": os.environ["PATH"], **{k: str(v) for k, v in settings.items()}}
    script = shell_function(local_sh(), "write_env_file") + 'write_env_file\n. "$ENV_FILE"\nenv -0\n'
    done = subprocess.run(["bash", "-euc", f'ENV_FILE="$STATE_DIR/env.sh"\n{script}'], env=env, cwd=tmp_path,
                          capture_output=True, check=True)  # fmt: skip
    got = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    assert got["VILOCAL_HOME"] == str(odd / "runs") and got["VILOCAL_STORAGE"] == str(odd / "runs" / "ray")
    assert got["RAY_AUTH_TOKEN_PATH"] == str(odd / "ray_auth_token") and got["RAY_AUTH_MODE"] == "token"
    assert got["RAY_ADDRESS"] == "10.0.0.7:6379" and got["RAY_API_SERVER_ADDRESS"] == "http://127.0.0.1:8265"
    assert not (tmp_path / "pwned").exists() and not (odd / "pwned").exists()  # nothing in a path ran


# ----------------------------------------------------------------------------- cluster files


def comment_above(text: str, needle: str) -> list[str]:
    """For each line holding ``needle``: the nearest block of ``#`` comment lines above it."""
    lines = text.splitlines()
    blocks = []
    for index, line in enumerate(lines):
        if needle not in line or line.lstrip().startswith("#"):
            continue
        j = index - 1
        while j >= 0 and not lines[j].lstrip().startswith("#"):
            j -= 1
        block = []
        while j >= 0 and lines[j].lstrip().startswith("#"):
            block.insert(0, lines[j].strip("# "))
            j -= 1
        blocks.append(" ".join(block))
    return blocks


def launcher(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_dashboard_on_loopback_and_mlflow_restricted(name: str) -> None:
    config, text = launcher(name), (CLUSTER / name).read_text()
    head = " ".join(config["head_start_ray_commands"])
    assert re.findall(r"--dashboard-host[= ](\S+)", head) == ["127.0.0.1"], "reach the dashboard by SSH tunnel"
    mlflow = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
    assert "--allowed-hosts" in mlflow
    if re.search(r"--host[= ]0\.0\.0\.0", mlflow):
        [why] = comment_above(text, "--host 0.0.0.0")
        assert "private network" in why and ("security group" in why or "firewall" in why), why
    else:
        assert re.search(r"--host[= ](127\.0\.0\.1|\$HEAD_IP)", mlflow)
    for command in config["worker_start_ray_commands"]:
        assert "0.0.0.0" not in command
    # The token: RAY_AUTH_MODE=token in the settings file, the value from the laptop's token file.
    assert "'export RAY_AUTH_MODE=token'" in " ".join(config["setup_commands"])
    token_mounts = {k: v for k, v in config["file_mounts"].items() if "token" in k}
    assert list(token_mounts.values()) == ["~/.ray/auth_token"]


def kuberay_docs() -> dict[str, list[dict[str, Any]]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(KUBERAY.glob("*.yaml"))}


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_kuberay_token_from_a_secret_and_wildcard_binds_behind_a_network_policy() -> None:
    docs = kuberay_docs()
    for name in ("raycluster.yaml", "rayjob.yaml"):
        [spec] = [d for doc in docs[name] for d in walk(doc) if "headGroupSpec" in d]
        assert spec["authOptions"]["mode"] == "token" and spec["authOptions"]["secretName"]
        text = (KUBERAY / name).read_text()
        if spec["headGroupSpec"]["rayStartParams"].get("dashboard-host") == "0.0.0.0":
            [why] = comment_above(text, 'dashboard-host: "0.0.0.0"')
            assert "pod network" in why and "networkpolicy.yaml" in why, why
    mlflow_args = next(d for d in walk(docs["mlflow.yaml"]) if d.get("name") == "mlflow" and "args" in d)["args"]
    assert any(a.startswith("--allowed-hosts=") for a in mlflow_args)
    if "--host=0.0.0.0" in mlflow_args:
        [why] = comment_above((KUBERAY / "mlflow.yaml").read_text(), "--host=0.0.0.0")
        assert "pod network" in why and "networkpolicy.yaml" in why, why
    # Every RAY_AUTH_TOKEN given explicitly comes from a Secret, never as a value.
    for name, file_docs in docs.items():
        for env in (d for doc in file_docs for d in walk(doc) if d.get("name") == "RAY_AUTH_TOKEN"):
            assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), name


def test_network_policy_admits_only_the_namespace_and_the_operator() -> None:
    [policy] = kuberay_docs()["networkpolicy.yaml"]
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["podSelector"] == {}  # every pod
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    assert all(rule.get("from") for rule in rules), "a rule without 'from' admits everyone"
    peers = [peer for rule in rules for peer in rule["from"]]
    assert not any("ipBlock" in peer for peer in peers)
    assert {"podSelector": {}} in peers  # the namespace's own pods
    operator = [p for p in peers if "namespaceSelector" in p]
    operator_pods = {"app.kubernetes.io/name": "kuberay-operator"}
    assert operator and all(p["podSelector"]["matchLabels"] == operator_pods for p in operator)
    operator_rule = next(r for r in rules if any("namespaceSelector" in p for p in r["from"]))
    assert [p["port"] for p in operator_rule["ports"]] == [8265]  # the job API only
    readme = (CLUSTER / "README.md").read_text()
    assert "apply -f cluster/kuberay/networkpolicy.yaml" in readme


def test_dockerfile_carries_no_secrets_and_runs_unprivileged() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    assert not re.search(r"^\s*(ENV|ARG)\s+\S*(TOKEN|PASSWORD|SECRET|ACCESS_KEY)", text, re.M | re.I)
    assert not re.search(r"^\s*USER\s+(root|0)\b", text, re.M | re.I), "the Ray image's own user (ray) runs it"
    rules = [line.strip() for line in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()]
    rules = [rule for rule in rules if rule and not rule.startswith("#")]
    assert rules[0] == "*", "the build context admits only what pip install needs (no runs/, tokens, .env)"
    assert {rule for rule in rules if rule.startswith("!")} == {"!pyproject.toml", "!README.md", "!vilocal_dist"}


#: Patterns of credentials that must never be committed.
SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key": r"aws_secret_access_key\s*[:=]\s*\S{20,}",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "GCP service-account key": r"\"private_key(_id)?\"\s*:",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
    "Slack token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "Ray token in a variable": r"RAY_AUTH_TOKEN=(?![\"']?\$)\S+",
    "literal Secret value": r"--from-literal=\w+=(?![\"']?\$\()\S+",
}


#: In configuration and docs (not Python, where ``token = f(x)`` is code): a key named like a
#: credential given a literal value rather than ``$VAR``, ``$(command)``, ``<placeholder>`` or a path.
LITERAL_CREDENTIAL = (
    r"(?im)^[\s-]*(export\s+)?[\w.-]*(token|password|passwd|secret|api_?key)\s*[:=]\s*['\"]?"
    r"(?![\"'$<{(~/]|\s*$)[\w+=.-]{6,}"
)


def scanned_files() -> list[Path]:
    files = [p for p in CLUSTER.rglob("*") if p.is_file()]
    files += [REPO_ROOT / "README.md", REPO_ROOT / "pyproject.toml", *PACKAGE.rglob("*.py")]
    files += [p for p in (REPO_ROOT / "sweeps").rglob("*") if p.is_file()]
    return sorted(files)


def test_no_secrets_in_files() -> None:
    hits = []
    for path in scanned_files():
        text = path.read_text(errors="replace")
        patterns = dict(SECRET_PATTERNS)
        if path.suffix != ".py":
            patterns["literal credential"] = LITERAL_CREDENTIAL
        for what, pattern in patterns.items():
            for match in re.finditer(pattern, text):
                hits.append(f"{path.relative_to(REPO_ROOT)}: {what}: {match.group(0)[:60]}")
    assert not hits, "credentials belong in the environment or a Secret:\n" + "\n".join(hits)
    for name, file_docs in kuberay_docs().items():
        assert not [d for d in file_docs if d.get("kind") == "Secret"], f"{name}: create Secrets out of band"


def test_the_secret_scan_catches_secrets() -> None:
    patterns = {**SECRET_PATTERNS, "literal credential": LITERAL_CREDENTIAL}
    samples = {
        "AWS access key id": "key = AKIAABCDEFGHIJKLMNOP",
        "literal credential": "  token: 4f9c2b7e1a0d",
        "Ray token in a variable": "export RAY_AUTH_TOKEN=abc123def",
        "literal Secret value": "--from-literal=auth_token=abc123",
    }
    for what, sample in samples.items():
        assert re.search(patterns[what], sample), what
    assert re.search(LITERAL_CREDENTIAL, "  - name: MLFLOW_TRACKING_PASSWORD\n    password: hunter2hunter2")
    allowed = ['--from-literal=auth_token="$(openssl rand -hex 32)"', 'RAY_AUTH_TOKEN="$(kubectl get secret x)"',
               "  secretName: vilocal-ray-token", 'TOKEN_FILE="$STATE_DIR/ray_auth_token"',
               "  /home/ray/vilocal/ray_auth_token: ~/.ray/auth_token", "  token: <your token>"]  # fmt: skip
    for sample in allowed:
        assert not any(re.search(p, sample) for p in patterns.values()), sample


def test_readme_documents_the_security_posture() -> None:
    readme = (CLUSTER / "README.md").read_text()
    section = readme.split("## Security", 1)[1]
    for term in ("127.0.0.1", "RAY_AUTH_MODE=token", "--allowed-hosts", "Secret", "weights_only=True",
                 "security group", "networkpolicy.yaml", "safe_load"):  # fmt: skip
        assert term in section, term
