"""Where runs are stored: a local or shared directory, or object storage (s3://, gs://) as Ray reaches it.

Ray Train writes checkpoints (and Ray Tune the sweep state) through pyarrow's filesystems; this module adds the
run's own files that live next to them (metrics_history.jsonl) and refuses storage URIs that would leak secrets.

Credentials never go into a URI, a config or a file: pyarrow's S3 client (the AWS SDK) reads them from the
environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN), the usual AWS files
(~/.aws/credentials, AWS_PROFILE) or the node's instance role; GCS uses the node's service account or
GOOGLE_APPLICATION_CREDENTIALS. An S3-compatible server (MinIO, Ceph, moto) is named by AWS_ENDPOINT_URL
(e.g. http://127.0.0.1:9000), which the AWS SDK under pyarrow reads like every AWS client does. Ray passes the
storage path itself to every process and logs it, and atomica-ray writes it into sweep.json: hence no secrets in
it, and no `?endpoint_override=...` query (its value would be glued to the paths of the files under the run).
"""

from __future__ import annotations

from urllib.parse import urlsplit

# query keys of pyarrow's S3/GCS URIs that carry credentials
SECRET_KEYS = ("access_key", "secret_key", "session_token", "access_token", "credential")


def check_storage_uri(path: str) -> None:
    """Raise ValueError for a storage URI holding credentials or query options (see the module docstring)."""
    if "://" not in path:
        return
    parts = urlsplit(path)
    if parts.username or parts.password:
        raise ValueError(f"--storage-path {parts.scheme}://{parts.hostname}{parts.path}: credentials in the URI "
                         "would be written to Ray's logs and the run's files; put them in the environment "
                         "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or the AWS config files instead")
    if parts.query:
        keys = sorted({item.split("=", 1)[0] for item in parts.query.split("&")})
        secret = [k for k in keys if any(s in k.lower() for s in SECRET_KEYS)]
        hint = ("credentials belong in the environment or the AWS config files" if secret else
                "set the S3 endpoint with AWS_ENDPOINT_URL (e.g. http://127.0.0.1:9000) instead")
        raise ValueError(f"--storage-path {parts.scheme}://{parts.netloc}{parts.path}: query options "
                         f"{keys} are not supported ({hint})")


class RunStorage:
    """The run's directory in Ray's storage, seen from a Train worker."""

    def __init__(self):
        import pyarrow.fs
        import ray.train

        storage = ray.train.get_context().get_storage()
        self.fs, self.path = storage.storage_filesystem, storage.experiment_fs_path
        self.is_local = isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    def write_text(self, name: str, text: str) -> None:
        """Replace file `name` of the run directory (one PUT on object storage: readers see old or new, whole)."""
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(f"{self.path}/{name}") as f:
            f.write(text.encode())
