#!/usr/bin/env python3
"""Independent check of the keyveil format-1 vectors, written from docs/vault-format.md and
docs/audit-format.md only (no keyveil code).

Needs Python >= 3.9 and `cryptography` >= 44 (for Argon2id). XChaCha20 is built here from
HChaCha20 (draft-irtf-cfrg-xchacha-03 §2.2) on top of the library's IETF ChaCha20-Poly1305.

    python3 verify_v1.py            # run from anywhere; prints what it checked
"""
import hashlib
import hmac
import json
import pathlib
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

HERE = pathlib.Path(__file__).resolve().parent


def rotl(v, c):
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def hchacha20(key, nonce16):
    """HChaCha20 (draft-irtf-cfrg-xchacha-03 §2.2): 20 rounds, output words 0-3 and 12-15."""
    s = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    s += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))

    def qr(a, b, c, d):
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 7)

    for _ in range(10):
        qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15)
        qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def xchacha20poly1305_decrypt(key, nonce24, ciphertext_and_tag, aad):
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).decrypt(b"\0\0\0\0" + nonce24[16:], ciphertext_and_tag, aad)


def check_vault():
    inputs = json.loads((HERE / "v1-minimum.inputs.json").read_text())
    data = (HERE / "v1-minimum.vault").read_bytes()
    assert data[0:8] == b"KEYVEIL\0", "magic"
    (version,) = struct.unpack(">H", data[8:10])
    assert version == 1, "version"
    body, checksum = data[:-32], data[-32:]
    assert hashlib.sha256(body).digest() == checksum, "checksum"
    slot_count, flags = data[10], data[11]
    assert 1 <= slot_count <= 8 and flags == 0
    off = 12
    slots = []
    for _ in range(slot_count):
        slot = body[off:off + 104]
        kind, m, t, p = slot[0], *struct.unpack(">III", slot[4:16])
        assert kind == 1 and slot[1:4] == b"\0\0\0"
        slots.append((slot, m, t, p))
        off += 104
    payload_nonce = body[off:off + 24]
    header = body[:off + 24]
    ciphertext = body[off + 24:]

    passphrase = inputs["passphrase_utf8"].encode()
    data_key = None
    for slot, m, t, p in slots:
        salt, nonce, wrapped = slot[16:32], slot[32:56], slot[56:104]
        kek = Argon2id(salt=salt, length=32, iterations=t, lanes=p, memory_cost=m).derive(passphrase)
        aad = b"KEYVEIL\0" + struct.pack(">H", version) + slot[0:32]
        data_key = xchacha20poly1305_decrypt(kek, nonce, wrapped, aad)
        break
    assert data_key.hex() == inputs["data_key_hex"], "data key"
    plaintext = xchacha20poly1305_decrypt(data_key, payload_nonce, ciphertext, header)
    assert len(plaintext) % 256 == 0, "padding"
    assert json.loads(plaintext.decode()) == inputs["payload"], "payload"
    audit_key = hmac.new(data_key, b"keyveil/v1/audit-hmac-key\x01", hashlib.sha256).digest()
    assert audit_key.hex() == inputs["audit_key_hex"], "audit key"
    print(f"v1-minimum.vault: OK ({len(data)} bytes, {slot_count} slot, m={m} KiB t={t} p={p}, "
          f"payload {len(plaintext)} padded bytes)")
    return audit_key


def canonical_string(s):
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"': out.append('\\"')
        elif ch == "\\": out.append("\\\\")
        elif ch == "\b": out.append("\\b")
        elif ch == "\t": out.append("\\t")
        elif ch == "\n": out.append("\\n")
        elif ch == "\f": out.append("\\f")
        elif ch == "\r": out.append("\\r")
        elif o < 0x20: out.append("\\u%04x" % o)
        else: out.append(ch)
    out.append('"')
    return "".join(out)


def canonical(v):
    if v is None: return "null"
    if v is True: return "true"
    if v is False: return "false"
    if isinstance(v, int): return str(v)
    if isinstance(v, str): return canonical_string(v)
    if isinstance(v, list): return "[" + ",".join(canonical(x) for x in v) + "]"
    if isinstance(v, dict):
        items = sorted(v.items(), key=lambda kv: kv[0].encode())
        return "{" + ",".join(canonical_string(k) + ":" + canonical(x) for k, x in items) + "}"
    raise TypeError(type(v))


def check_audit(audit_key):
    raw = (HERE / "audit-v1.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    prev = "0" * 64
    lines = raw[:-1].split(b"\n")
    for n, line in enumerate(lines, 1):
        entry = json.loads(line)
        extras = {k: v for k, v in entry.items() if k not in ("seq", "ts", "event", "prev", "mac")}
        mac_input = ('{"seq":%d,"ts":%s,"event":%s' % (entry["seq"], canonical_string(entry["ts"]),
                                                         canonical_string(entry["event"])))
        inner = canonical(extras)[1:-1]
        mac_input += ("," + inner if inner else "") + ',"prev":' + canonical_string(entry["prev"]) + "}"
        assert line == (mac_input[:-1] + ',"mac":"%s"}' % entry["mac"]).encode(), f"line {n}: canonical"
        mac = hmac.new(audit_key, mac_input.encode(), hashlib.sha256).hexdigest()
        assert mac == entry["mac"], f"line {n}: MAC"
        assert entry["seq"] == n and entry["prev"] == prev, f"line {n}: chain"
        prev = hashlib.sha256(line).hexdigest()
    print(f"audit-v1.jsonl: OK ({len(lines)} entries)")


if __name__ == "__main__":
    check_audit(check_vault())
    sys.exit(0)
