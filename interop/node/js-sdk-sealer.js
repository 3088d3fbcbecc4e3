// Seals (`seal4`, `seal3`: the current and the older form) or opens (`open`) an access token
// with Node's own crypto, as the modular Catalyst JS SDK's (@zcatalyst/connector) published
// format defines it (written from that description): `node js-sdk-sealer.js MODE KEY VALUE`
// prints the result. Used by the interop tests (crates/*/tests/catalyst.rs).
const crypto = require("crypto");
const [mode, key, value] = process.argv.slice(-3);
if (mode === "open") {
  const parts = Buffer.from(value, "base64").toString("utf8").split(":");
  const k = parts.length === 4
    ? crypto.scryptSync(key, Buffer.from(parts[3], "hex"), 32)
    : crypto.createHash("sha256").update(key).digest();
  const d = crypto.createDecipheriv("aes-256-gcm", k, Buffer.from(parts[1], "hex"));
  d.setAuthTag(Buffer.from(parts[2], "hex"));
  process.stdout.write(d.update(parts[0], "hex", "utf8") + d.final("utf8"));
} else {
  const iv = crypto.randomBytes(16);
  const salt = crypto.randomBytes(16);
  const k = mode === "seal4" ? crypto.scryptSync(key, salt, 32)
                             : crypto.createHash("sha256").update(key).digest();
  const c = crypto.createCipheriv("aes-256-gcm", k, iv);
  const body = c.update(value, "utf8", "hex") + c.final("hex");
  const parts = [body, iv.toString("hex"), c.getAuthTag().toString("hex")];
  if (mode === "seal4") parts.push(salt.toString("hex"));
  process.stdout.write(Buffer.from(parts.join(":")).toString("base64"));
}
