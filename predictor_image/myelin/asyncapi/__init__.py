"""`kind: AsyncAPI`: jobs submitted over HTTP, stored durably, run by a worker, read back later.

- `store`: the `JobStore` Protocol and `open_store` (the one place that picks SQLite or SQS + S3);
- `store_sqlite`, `store_sqs`: the two implementations;
- `worker`: claims jobs and runs them through `invoke.Invoker`, as the HTTP path does;
- `routes`: `POST /<endpoint>` (submit) and `GET /<endpoint>/<id>` (status);
- `runtime`: `AsyncApiRuntime`, the `ApiRuntime` of this kind (roles, drain, metrics).
"""

from .runtime import AsyncApiRuntime

__all__ = ["AsyncApiRuntime"]
