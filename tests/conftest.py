"""Suite-wide pytest hooks."""


def pytest_report_header(config):
    """Name the OpenGL renderer in the test log (llvmpipe on CPU machines and in CI)."""
    from rasterizer.context import ContextError, context_info, create_context

    try:
        ctx = create_context()
    except ContextError as exc:
        return f"OpenGL: unavailable ({exc})"
    info = context_info(ctx)
    ctx.release()
    return f"OpenGL: {info.renderer} | {info.version}"
