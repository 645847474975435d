"""The I/O engine: one daemon thread owning one asyncio loop, the HTTP client and every WebSocket."""
