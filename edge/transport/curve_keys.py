"""CURVE keys for the ZeroMQ output: encryption plus authentication of subscribers.

Key files are pyzmq's own format (`zmq.auth.create_certificates`): NAME.key holds the public key,
NAME.key_secret the public and the secret key. The publisher (server) loads its secret file and a
directory of allowed client public keys; pyzmq's ThreadAuthenticator (ZAP) rejects every client whose
key is not there. An empty or missing allowed-keys directory is a configuration error, not
"allow nobody" or "allow all": both would be a silent surprise on the line.

`hlgfa keys generate DIR [--name NAME]` writes a key pair.
"""

import argparse
import stat
from dataclasses import dataclass
from pathlib import Path

from edge.core.errors import ConfigError


@dataclass(frozen=True)
class ServerCurve:
    """Publisher side: its own secret key file and the directory of allowed subscriber public keys."""

    secret_key_file: Path
    allowed_clients_dir: Path


@dataclass(frozen=True)
class ClientCurve:
    """Subscriber side: its own secret key file and the publisher's public key file."""

    secret_key_file: Path
    server_public_key_file: Path


def _check_private(path: Path) -> None:
    """Refuse a secret key file that group or others may read or write, as OpenSSH refuses such a
    private key ("UNPROTECTED PRIVATE KEY FILE"): anyone who reads it can impersonate this end."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"CURVE secret key file {path}: mode {mode:04o} lets group or others read or change "
                          f"it; expected 0600 (only its owner): run `chmod 600 {path}`")


def _check_not_writable_by_others(path: Path, what: str) -> None:
    """Refuse a folder or key file of allowed clients that group or others may write, as OpenSSH's
    StrictModes refuses such an authorized_keys: anyone who writes there lets any key in."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o022:
        raise ConfigError(f"{what} {path}: mode {mode:04o} lets group or others write it, so they could add a "
                          f"key of their own; run `chmod go-w {path}`")


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a NAME.key_secret file; refuses a public-only file and one others may read."""
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CURVE secret key file {path}: does not exist (create one with `hlgfa keys generate DIR`)")
    _check_private(path)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as error:
        raise ConfigError(f"CURVE secret key file {path}: not a zmq certificate ({error})") from None
    if not secret:
        raise ConfigError(f"CURVE secret key file {path}: holds only a public key; use the NAME.key_secret file")
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CURVE public key file {path}: does not exist")
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as error:
        raise ConfigError(f"CURVE public key file {path}: not a zmq certificate ({error})") from None
    return public


def check_allowed_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"CURVE allowed-clients directory {path}: does not exist")
    if not any(path.glob("*.key")):
        raise ConfigError(f"CURVE allowed-clients directory {path}: holds no *.key public key files, so no "
                          "subscriber could connect; copy each subscriber's NAME.key there")
    _check_not_writable_by_others(path, "CURVE allowed-clients directory")
    for key in sorted(path.glob("*.key")):
        _check_not_writable_by_others(key, "CURVE allowed client key")
    return path


def start_authenticator(context, curve: ServerCurve):
    """Start pyzmq's ZAP authenticator on `context`, allowing only the keys in the directory.

    The keys are read once here; restart the daemon after adding a subscriber key.
    """
    from zmq.auth.thread import ThreadAuthenticator

    allowed = check_allowed_dir(curve.allowed_clients_dir)
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(allowed))
    return authenticator


def apply_server(socket, curve: ServerCurve) -> None:
    public, secret = load_keypair(curve.secret_key_file)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True


def apply_client(socket, curve: ClientCurve) -> None:
    public, secret = load_keypair(curve.secret_key_file)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = load_public_key(curve.server_public_key_file)


def generate(directory: str | Path, name: str) -> tuple[Path, Path]:
    import zmq.auth

    directory = Path(directory)
    public_file, secret_file = directory / f"{name}.key", directory / f"{name}.key_secret"
    for existing in (public_file, secret_file):
        if existing.exists():
            raise ConfigError(f"{existing}: already exists; refusing to overwrite a key")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def _generate_handler(args: argparse.Namespace) -> int:
    public, secret = generate(args.directory, args.name)
    print(f"public key  {public}  (give to the other side)")
    print(f"secret key  {secret}  (keep here, mode 600)")
    return 0


def configure(parser) -> None:
    """The arguments and handler of `hlgfa keys` (edge/cli.py names the command and its one-line help)."""
    actions = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = actions.add_parser("generate", help="write NAME.key and NAME.key_secret into DIR")
    gen.add_argument("directory", metavar="DIR")
    gen.add_argument("--name", default="server", help="file name stem (default: server)")
    gen.set_defaults(handler=_generate_handler)
