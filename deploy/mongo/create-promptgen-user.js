// Run once by the mongo image's entrypoint on a fresh data directory (deploy/compose.yaml):
// the services' user, which reads and writes promptgen's database and nothing else. Its
// password is the compose secret mongo_promptgen_password, as in the services' mongo_url.
const fs = require("fs");
db.getSiblingDB("promptgen").createUser({
  user: "promptgen",
  pwd: fs.readFileSync("/run/secrets/mongo_promptgen_password", "utf8").trim(),
  roles: [{ role: "readWrite", db: "promptgen" }],
});
