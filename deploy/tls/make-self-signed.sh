#!/usr/bin/env bash
# A throwaway self-signed certificate for trying the gate's TLS listener (compose, a laptop):
#
#   deploy/tls/make-self-signed.sh DIR [NAME...]
#
# writes DIR/tls.crt and DIR/tls.key (EC P-256, 30 days) for localhost, 127.0.0.1 and each
# NAME. Browsers will warn: it is signed by nobody. For real traffic use a certificate from a
# CA (ACME, cert-manager); the gate picks up renewed files by itself.
set -euo pipefail

dir=${1:?usage: make-self-signed.sh DIR [NAME...]}
shift
command -v openssl >/dev/null || {
    echo "make-self-signed: openssl is required" >&2
    exit 1
}
sans="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    sans="$sans,DNS:$name"
done
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=${1:-localhost}" -addext "subjectAltName=$sans" \
    -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
# Readable by the container's own user (compose bind-mounts the directory as it is): this is
# a throwaway demo key. Keep a real key 0600 or 0640, readable by the gate's user alone.
chmod 0644 "$dir/tls.crt" "$dir/tls.key"
echo "make-self-signed: wrote $dir/tls.crt and $dir/tls.key ($sans)"
