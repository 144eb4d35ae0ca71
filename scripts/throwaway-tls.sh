#!/usr/bin/env bash
# Writes a throwaway CA and a server certificate for localhost and 127.0.0.1 into DIR
# (ca.pem, ca.key, server.pem, server.key), plus a second, unrelated CA (other-ca.pem)
# that lets tests check that verification really happens. Valid for two days.
#
#   scripts/throwaway-tls.sh DIR [CA_NAME]
set -euo pipefail
dir=${1:?folder}
name=${2:-switchboard-test-ca}
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=$name" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 2 -subj "/CN=unrelated-ca" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext 2>/dev/null
