import httpx

from tests.servers import serve_app


async def app(scope, receive, send):
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_serve_app_answers_on_an_ephemeral_port():
    async with serve_app(app) as url:
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as client:
            r = await client.get(url + "/")
        assert r.status_code == 200 and r.text == "ok"
