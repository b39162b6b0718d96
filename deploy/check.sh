#!/usr/bin/env bash
# What CI checks of deploy/, since no container engine or cluster runs there:
#   1. every YAML file under deploy/ parses, and the Kubernetes and compose files agree with
#      each other (names, ports, env the configs read);
#   2. the sessiongate configs inside them (compose/, the k8s ConfigMap, loadtest/) and the
#      image's default config pass `sessiongate check`;
#   3. deploy/Dockerfile builds the way the Makefile does: the same cargo command
#      (`cargo build --release --locked`, the Makefile's build-release target) and the same
#      system packages (each one the Dockerfile's build stage installs appears in the Makefile);
#   4. the shell scripts under deploy/ and benches/ parse (and pass shellcheck where installed).
#
#   deploy/check.sh [SESSIONGATE_BIN]      (default target/debug/sessiongate)
#
# Exits 1 after listing every failure. Needs python3 with PyYAML; when PyYAML is missing it is
# installed with pip into a temporary directory for this run only.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-target/debug/sessiongate}
[[ $bin == /* ]] || bin=$PWD/$bin
cd "$root"

failures=0
fail() {
    echo "deploy/check: FAIL: $*" >&2
    failures=$((failures + 1))
}
ok() { echo "deploy/check: ok: $*"; }

[[ -x $bin ]] || {
    echo "deploy/check: $bin is not an executable sessiongate binary (build it, or pass its path)" >&2
    exit 1
}
command -v python3 >/dev/null || {
    echo "deploy/check: python3 is required" >&2
    exit 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! python3 -c 'import yaml' 2>/dev/null; then
    # Into a private directory: no change to the system's Python, and no clash with
    # distributions that refuse pip installs into their own interpreter (PEP 668).
    echo "deploy/check: PyYAML not found; installing it into a temporary directory" >&2
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$work/pylib" pyyaml >&2 || {
        echo "deploy/check: cannot install PyYAML: apt-get install python3-yaml, or pip install pyyaml" >&2
        exit 1
    }
    export PYTHONPATH="$work/pylib${PYTHONPATH:+:$PYTHONPATH}"
fi

# --- 1 and 3: YAML, cross-references, Dockerfile against Makefile (python: real YAML parser).
# It prints `FAIL ...` / `OK ...` lines and writes the configs it extracts under $work.
python3 - "$work" >"$work/py.out" <<'PY' || fail "the YAML/Dockerfile checker crashed (see above)"
import pathlib, re, sys
import yaml

work = pathlib.Path(sys.argv[1])
deploy = pathlib.Path("deploy")
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")

def fail(msg): print(f"FAIL {msg}")
def ok(msg): print(f"OK {msg}")

def config_vars(text):
    # ${NAME} references, skipping whole-line comments as the gate does.
    return {m for line in text.splitlines() if not line.lstrip().startswith("#")
            for m in VAR.findall(line)}

# 1. Every YAML file parses.
docs = {}
for path in sorted(p for p in deploy.rglob("*") if p.suffix in (".yaml", ".yml")):
    try:
        docs[path] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        fail(f"{where}: does not parse as YAML: {getattr(e, 'problem', e)}")
if docs:
    ok(f"{len(docs)} YAML files under deploy/ parse")

# Kubernetes manifests.
k8s_dir = deploy / "k8s"
objects = {}
for path, ds in docs.items():
    if path.parent != k8s_dir:
        continue
    for d in ds:
        if not isinstance(d, dict):
            fail(f"{path}: a document is not a mapping")
            continue
        if d.get("kind") == "Kustomization":
            for r in d.get("resources", []):
                if not (k8s_dir / r).is_file():
                    fail(f"{path}: resource {r} does not exist")
            continue
        name = (d.get("metadata") or {}).get("name")
        if not (d.get("apiVersion") and d.get("kind") and name):
            fail(f"{path}: every object needs apiVersion, kind and metadata.name")
            continue
        objects[(d["kind"], name)] = (path, d)

def obj(kind):
    return [(n, p, d) for (k, n), (p, d) in objects.items() if k == kind]

for kind in ("ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
             "HorizontalPodAutoscaler"):
    if not obj(kind):
        fail(f"deploy/k8s: no {kind}")

# Extract the files the pods see in /etc/sessiongate: ConfigMap data and Secret stringData.
k8s_out = work / "k8s"
k8s_out.mkdir()
secret_keys = {}
for n, p, d in obj("Secret"):
    data = d.get("stringData") or {}
    secret_keys[n] = set(data) | set(d.get("data") or {})
    for key, value in data.items():
        if key.endswith(".yaml"):
            (k8s_out / key).write_text(value)
    if "SESSIONGATE_KEY" in data:
        (work / "placeholder_key").write_text(data["SESSIONGATE_KEY"])
configmaps = {}
for n, p, d in obj("ConfigMap"):
    configmaps[n] = d.get("data") or {}
    for key, value in configmaps[n].items():
        if key.endswith(".yaml"):
            (k8s_out / key).write_text(value)
    # Where the embedded config starts in the manifest, so `check`'s FILE:LINE:COL can be
    # shown against the file an operator edits: a block scalar's text begins on the line
    # after its `|`, indented by the first line's indentation.
    for doc in yaml.compose_all(p.read_text()):
        if not isinstance(doc, yaml.MappingNode):
            continue
        top = {k.value: v for k, v in doc.value}
        if "data" not in top or top.get("kind") is None or top["kind"].value != "ConfigMap":
            continue
        for k, v in top["data"].value:
            if k.value == "sessiongate.yaml" and v.style == "|":
                first = p.read_text().splitlines()[v.start_mark.line + 1]
                indent = len(first) - len(first.lstrip(" "))
                (work / "k8s_origin").write_text(f"{p} {v.start_mark.line + 1} {indent}\n")
k8s_config = k8s_out / "sessiongate.yaml"
if k8s_config.exists():
    ok("extracted sessiongate.yaml (and users.yaml) from the Kubernetes ConfigMap/Secret")
else:
    fail("deploy/k8s: no ConfigMap holds sessiongate.yaml")

for n, p, d in obj("Deployment"):
    spec = d.get("spec", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    if spec.get("selector", {}).get("matchLabels", {}).items() - labels.items():
        fail(f"{p}: selector does not match the pod labels")
    pod = spec.get("template", {}).get("spec", {})
    if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        fail(f"{p}: pod securityContext.runAsNonRoot must be true")
    for vol in pod.get("volumes", []):
        sources = vol.get("projected", {}).get("sources", []) + [vol]
        for s in sources:
            if "configMap" in s and s["configMap"]["name"] not in configmaps:
                fail(f"{p}: volume {vol['name']} names ConfigMap {s['configMap']['name']}, not defined")
            if "secret" in s:
                sname = s["secret"].get("secretName") or s["secret"].get("name")
                if sname not in secret_keys:
                    fail(f"{p}: volume {vol['name']} names Secret {sname}, not defined")
    for c in pod.get("containers", []):
        ports = {pt.get("name"): pt.get("containerPort") for pt in c.get("ports", [])}
        env = {e["name"]: e for e in c.get("env", [])}
        for e in env.values():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["key"] not in secret_keys.get(ref["name"], set()):
                fail(f"{p}: env {e['name']} reads {ref['name']}/{ref['key']}, which no Secret defines")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = c.get(probe, {}).get("httpGet", {})
            if get.get("path") != path:
                fail(f"{p}: {probe} must GET {path}")
            if get.get("port") not in ports and get.get("port") not in ports.values():
                fail(f"{p}: {probe} port {get.get('port')} is not a container port")
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{p}: container needs readOnlyRootFilesystem: true, allowPrivilegeEscalation: false")
        if k8s_config.exists():
            text = k8s_config.read_text()
            missing = sorted(config_vars(text) - env.keys())
            if missing:
                fail(f"{p}: the ConfigMap's config reads {', '.join(missing)}, which the container's env does not set")
            cfg = yaml.safe_load(text)
            admin_port = int(str(cfg.get("admin", {}).get("listen", ":0")).rsplit(":", 1)[1])
            listen = cfg.get("listen")
            listen_ports = {int(str(a).rsplit(":", 1)[1]) for a in (listen if isinstance(listen, list) else [listen])}
            if ports.get("admin") != admin_port:
                fail(f"{p}: container port `admin` ({ports.get('admin')}) is not the config's admin.listen port ({admin_port})")
            if ports.get("http") not in listen_ports:
                fail(f"{p}: container port `http` ({ports.get('http')}) is not among the config's listen ports {sorted(listen_ports)}")
    pod_labels = labels
    for kind in ("Service", "PodDisruptionBudget"):
        for sn, sp, sd in obj(kind):
            sel = sd["spec"].get("selector", {})
            sel = sel.get("matchLabels", sel)
            if sel.items() - pod_labels.items():
                fail(f"{sp}: {kind} {sn} selects no pod of Deployment {n}")
    for hn, hp, hd in obj("HorizontalPodAutoscaler"):
        if hd["spec"].get("scaleTargetRef", {}).get("name") != n:
            fail(f"{hp}: HPA {hn} does not target Deployment {n}")

# Compose.
compose_path = deploy / "docker-compose.yml"
if compose_path in docs:
    services = (docs[compose_path][0] or {}).get("services", {})
    for s in ("redis", "gate"):
        if s not in services:
            fail(f"{compose_path}: no `{s}` service")
    gate = services.get("gate", {})
    env = gate.get("environment", {})
    env = dict(e.split("=", 1) for e in env) if isinstance(env, list) else env
    mounted = None
    for v in gate.get("volumes", []):
        src, dst = v.split(":")[:2]
        if dst == "/etc/sessiongate":
            mounted = deploy / src
    if mounted is None or not (mounted / "sessiongate.yaml").is_file():
        fail(f"{compose_path}: the gate must mount a directory holding sessiongate.yaml at /etc/sessiongate")
    else:
        missing = sorted(config_vars((mounted / "sessiongate.yaml").read_text()) - set(env))
        if missing:
            fail(f"{compose_path}: {mounted}/sessiongate.yaml reads {', '.join(missing)}, which the gate's environment does not set")
        (work / "compose_dir").write_text(str(mounted))
    upstream_hosts = {v.split(":")[0] for k, v in env.items() if k.startswith("ECHO_")}
    for h in sorted(upstream_hosts - set(services)):
        fail(f"{compose_path}: the gate routes to `{h}`, which is no service")

# 3. Dockerfile against Makefile.
dockerfile = deploy / "Dockerfile"
makefile = pathlib.Path("Makefile")
cmd = "cargo build --release --locked"
text = dockerfile.read_text() if dockerfile.exists() else ""
# Join continuation lines so each instruction is one line.
lines = re.sub(r"\\\n", " ", text).splitlines()
stages, current = [], None
for line in lines:
    if re.match(r"(?i)^\s*FROM\s", line):
        current = []
        stages.append(current)
    elif current is not None:
        current.append(line)
if not stages:
    fail(f"{dockerfile}: missing or has no FROM")
else:
    build = " ".join(stages[0])
    if cmd not in build:
        fail(f"{dockerfile}: the build stage does not run `{cmd}`")
    packages = []
    for m in re.finditer(r"apt-get install((?:\s+[^&;|\s]+)+)", build):
        packages += [w for w in m.group(1).split() if not w.startswith("-")]
    if "cmake" not in packages:
        fail(f"{dockerfile}: the build stage does not install cmake (pingora-core builds zlib-ng with it)")
    if len(stages) < 2:
        fail(f"{dockerfile}: not multi-stage")
    else:
        runtime = " ".join(stages[-1])
        if not re.search(r"(?m)USER\s+(?!0\b|root\b)\S+", runtime):
            fail(f"{dockerfile}: the runtime stage must switch to a non-root USER")
    if not makefile.exists():
        fail("Makefile not found: cannot compare the Dockerfile's build steps with it")
    else:
        mk = makefile.read_text()
        recipe, inside = [], False
        for line in mk.splitlines():
            if re.match(r"^build-release\s*:", line):
                inside = True
                continue
            if inside:
                if line.startswith("\t"):
                    # `$(CARGO)` is the Makefile's `CARGO ?= cargo`.
                    step = line.strip().lstrip("@-").strip()
                    recipe.append(re.sub(r"^\$[({]CARGO[)}]", "cargo", step))
                elif line.strip() and not line.startswith("#"):
                    break
        if not recipe:
            fail("Makefile: no build-release target")
        elif cmd not in recipe:
            fail(f"Makefile: build-release does not run exactly `{cmd}` (it runs: {'; '.join(recipe)})")
        else:
            ok(f"Dockerfile and Makefile build-release both run `{cmd}`")
        missing = [p for p in packages if not re.search(rf"(?<![\w.+-]){re.escape(p)}(?![\w.+-])", mk)]
        if missing:
            fail(f"Makefile does not name the package(s) {', '.join(missing)} that {dockerfile}'s build stage installs (add them to BUILD_DEPS)")
        elif packages:
            ok(f"Dockerfile build packages ({' '.join(packages)}) all appear in the Makefile")
PY
while IFS= read -r line; do
    case $line in
    FAIL\ *) fail "${line#FAIL }" ;;
    OK\ *) ok "${line#OK }" ;;
    *) echo "$line" ;;
    esac
done <"$work/py.out"

# --- 2: `sessiongate check` on every config a deployment would load, from the working
# directory it would run in (users_file paths are relative to it). The key is a fresh one
# unless the caller set one; everything else keeps the configs' loopback defaults.
SESSIONGATE_KEY=${SESSIONGATE_KEY:-$("$bin" keygen)}
export SESSIONGATE_KEY

# check_config LABEL DIR FILE ORIGIN [NAME=VALUE...]: ORIGIN ("PATH LINE_OFFSET INDENT", or
# empty) is where FILE's text really is, so FILE:LINE:COL errors point at the file to edit
# (for the k8s config, into the ConfigMap manifest).
check_config() {
    local label=$1 dir=$2 file=$3 origin=$4 out
    shift 4
    if out=$(cd "$dir" && env "$@" "$bin" check -c "$file" 2>&1); then
        ok "sessiongate check: $label"
    else
        fail "sessiongate check: $label:"
        if [[ -n $origin ]]; then
            read -r manifest line_off indent <<<"$origin"
            out=$(printf '%s\n' "$out" | awk -F: -v f="$file" -v m="$manifest" -v l="$line_off" -v c="$indent" '
                $1 == f && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ {
                    rest = substr($0, length($1 ":" $2 ":" $3 ":") + 1)
                    print m ":" ($2 + l) ":" ($3 + c) ":" rest; next
                }
                { print }')
        fi
        printf '%s\n' "$out" | sed 's/^/    /' >&2
    fi
}
# The configs with a TLS listener need certificate files `check` can read: a throwaway one,
# made the way compose users make theirs (never a checked-in key).
tls_dir=$work/tls
if ! deploy/tls/make-self-signed.sh "$tls_dir" >/dev/null; then
    fail "deploy/tls/make-self-signed.sh could not make a certificate"
fi
if [[ -f $work/compose_dir ]]; then
    compose_dir=$(cat "$work/compose_dir")
    check_config "compose config" "$compose_dir" sessiongate.yaml "$compose_dir/sessiongate.yaml 0 0" \
        SESSIONGATE_TLS_DIR="$tls_dir"
fi
if [[ -f $work/k8s/sessiongate.yaml ]]; then
    origin=$(cat "$work/k8s_origin" 2>/dev/null || true)
    check_config "Kubernetes ConfigMap config" "$work/k8s" sessiongate.yaml "$origin" \
        SESSIONGATE_TLS_DIR="$tls_dir"
    # The Secret's placeholder must stay unusable, so nobody ships it by accident.
    if [[ -f $work/placeholder_key ]] &&
        (cd "$work/k8s" && SESSIONGATE_TLS_DIR="$tls_dir" SESSIONGATE_KEY=$(cat "$work/placeholder_key") "$bin" check -c sessiongate.yaml >/dev/null 2>&1); then
        fail "deploy/k8s/secret.yaml: the placeholder SESSIONGATE_KEY is accepted as a real key"
    fi
fi
check_config "load-test config" deploy/loadtest sessiongate.yaml "deploy/loadtest/sessiongate.yaml 0 0" \
    LT_USERS_FILE="$root/deploy/compose/users.yaml"
# The image's default: /etc/sessiongate/sessiongate.yaml with conf/users.yaml below its
# working directory, the same layout as conf/ in the repository.
if [[ -f conf/sessiongate.yaml ]]; then
    check_config "image default config (conf/)" . conf/sessiongate.yaml ""
fi

# --- 4: scripts.
mapfile -t scripts < <(find deploy benches -name '*.sh' -type f | sort)
for s in "${scripts[@]}"; do
    bash -n "$s" || fail "$s: bash syntax error"
done
if command -v shellcheck >/dev/null; then
    if shellcheck "${scripts[@]}"; then
        ok "shellcheck: ${#scripts[@]} scripts"
    else
        fail "shellcheck found problems in the scripts above"
    fi
else
    ok "${#scripts[@]} scripts parse (shellcheck not installed: skipped)"
fi

if ((failures > 0)); then
    echo "deploy/check: $failures failure(s)" >&2
    exit 1
fi
echo "deploy/check: all passed"
