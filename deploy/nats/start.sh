#!/bin/sh
# Starts a NATS node of deploy/compose.yaml: the users' passwords, read from the compose
# secrets, become the variables auth.conf names (nats-server reads them from its
# environment), so no password is in a file of the image or of this directory.
set -eu
for user in gateway generator projector admin; do
  name=$(echo "PROMPTGEN_NATS_${user}_PASSWORD" | tr '[:lower:]' '[:upper:]')
  export "$name=$(cat "/run/secrets/nats_${user}_password")"
done
exec nats-server --config /etc/nats/promptgen/nats.conf
