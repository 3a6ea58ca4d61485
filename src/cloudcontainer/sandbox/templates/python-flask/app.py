from flask import Flask

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return "<!doctype html><title>Flask</title><h1>Hello from Flask</h1>"


if __name__ == "__main__":
    # All addresses, a fixed port, and the reloader: an edit restarts the server. The
    # interactive debugger stays off: a preview is reachable from the network.
    app.run(host="0.0.0.0", port=5000, use_reloader=True)  # noqa: S104
