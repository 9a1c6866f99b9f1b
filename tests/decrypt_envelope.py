#!/usr/bin/env python3
"""Independent decryption of a tenant_guard v1 envelope with Python's
`cryptography` package, written from the README's description only.

usage: decrypt_envelope.py PASSPHRASE ENVELOPE_HEX AAD_HEX
       decrypt_envelope.py --secret PASSPHRASE ENVELOPE_HEX ORG_UUID KIND NAME
Prints the plaintext (UTF-8) on success; exits 1 on any failure.
"""
import struct
import sys
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def hkdf(passphrase: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=b"tenant_guard/v1", info=info).derive(passphrase)


def secret_aad(org: str, kind: str, name: str) -> bytes:
    k, n = kind.encode(), name.encode()
    return b"tenant_guard/v1/secret\x00" + uuid.UUID(org).bytes + struct.pack(">I", len(k)) + k + struct.pack(">I", len(n)) + n


def main(argv):
    if argv[0] == "--secret":
        passphrase, env_hex, org, kind, name = argv[1:6]
        aad = secret_aad(org, kind, name)
    else:
        # encrypt()/decrypt() prefix the caller's associated data.
        passphrase, env_hex, aad_hex = argv[0:3]
        aad = b"tenant_guard/v1/user\x00" + bytes.fromhex(aad_hex)
    env = bytes.fromhex(env_hex)
    if len(env) < 33 or env[0] != 1:
        raise SystemExit("not a v1 envelope")
    header, nonce, body = env[:5], env[5:17], env[17:]
    key_id = hkdf(passphrase.encode(), b"tenant_guard/v1/key-id", 4)
    if header[1:5] != key_id:
        raise SystemExit("envelope was made under another passphrase")
    key = hkdf(passphrase.encode(), b"tenant_guard/v1/secrets", 32)
    sys.stdout.write(AESGCM(key).decrypt(nonce, body, header + aad).decode())


if __name__ == "__main__":
    main(sys.argv[1:])
