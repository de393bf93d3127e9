#!/bin/sh
# The secrets of deploy/compose.yaml, made on this machine and never committed
# (deploy/secrets/ ignores everything but its .gitignore):
#   nats-ca.pem, nats-ca-key.pem          a local CA for the NATS servers (keep its key offline
#                                         in production, or use your own CA)
#   nats-server.pem, nats-server-key.pem  the servers' certificate (compose's nats-1..3, the
#                                         Helm chart's *.nats-headless, localhost, 127.0.0.1):
#                                         client TLS and TLS between the nodes
#   nats_<user>_password                  one NATS password per service user (auth.conf)
#   mongo_root_password, mongo_promptgen_password, mongo_keyfile
#   mongo_url                             the services' MONGO_URL, with the promptgen user
#   stream_token_secret                   signs the SSE stream tokens
# An existing file is kept, so running it again changes nothing.
#   sh deploy/make-secrets.sh [DIR] [MONGO_HOSTS_AND_OPTIONS]
set -eu
dir=${1:-$(dirname "$0")/secrets}
mongo_where=${2:-mongo-1:27017,mongo-2:27017,mongo-3:27017/promptgen?replicaSet=rs0&authSource=promptgen}
mkdir -p "$dir"
cd "$dir"
umask 077

secret() {  # a random value with a letter first: NATS reads passwords as config values
  [ -s "$1" ] || printf 'p%s' "$(openssl rand -hex 24)" > "$1"
}

for user in gateway generator projector admin; do secret "nats_${user}_password"; done
secret mongo_root_password
secret mongo_promptgen_password
[ -s stream_token_secret ] || openssl rand -hex 32 > stream_token_secret
[ -s mongo_keyfile ] || openssl rand -base64 756 > mongo_keyfile
[ -s mongo_url ] || printf 'mongodb://promptgen:%s@%s' "$(cat mongo_promptgen_password)" "$mongo_where" > mongo_url

if [ ! -s nats-ca.pem ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -days 825 -subj "/CN=promptgen NATS CA" \
    -keyout nats-ca-key.pem -out nats-ca.pem 2>/dev/null
fi
if [ ! -s nats-server.pem ]; then
  openssl req -newkey rsa:3072 -nodes -subj "/CN=nats" -keyout nats-server-key.pem -out nats-server.csr 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:nats-1,DNS:nats-2,DNS:nats-3,DNS:*.nats-headless,DNS:nats,DNS:localhost,IP:127.0.0.1" \
    "extendedKeyUsage=serverAuth,clientAuth" > nats-server.ext
  openssl x509 -req -in nats-server.csr -CA nats-ca.pem -CAkey nats-ca-key.pem -CAcreateserial \
    -days 825 -extfile nats-server.ext -out nats-server.pem 2>/dev/null
  rm -f nats-server.csr nats-server.ext nats-ca.srl
fi
# Readable by the services' user (UID 10001) and the NATS server's: the directory stays private
# to its owner on the host, and compose mounts each file only where it is used. The CA's key is
# mounted nowhere; mongod wants its key file readable by its own user alone (UID 999 in the
# official image): `chown 999 mongo_keyfile` as root before the first start.
chmod 0644 ./*
chmod 0600 nats-ca-key.pem
chmod 0400 mongo_keyfile
chmod 0700 .
echo "secrets in $(pwd)"
