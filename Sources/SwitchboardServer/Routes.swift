import HTTPTypes
import Hummingbird
import NIOCore
import SwitchboardProtocol

/// The gateway's plain HTTP routes. `GET /ws` with upgrade headers never gets here: the
/// upgrade is handled in ``GatewayChildChannel``.
enum Routes {
    static func add(to router: Router<BasicRequestContext>, gateway: Gateway) {
        router.get("/healthz") { _, _ in
            jsonResponse(.ok, #"{"status":"alive"}"#)
        }
        router.get("/readyz") { _, _ in
            gateway.isReady
                ? jsonResponse(.ok, #"{"status":"ready"}"#)
                : jsonResponse(.serviceUnavailable, #"{"status":"not_ready"}"#)
        }
        router.get("/ws") { _, _ in
            var response = jsonResponse(.upgradeRequired, HTTPErrorBody.json(status: .upgradeRequired, message: "GET /ws needs a WebSocket upgrade"))
            response.headers[.upgrade] = "websocket"
            return response
        }
        PublishAPI.add(to: router, gateway: gateway)
        router.get("/metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: gateway.metrics.scrape(gateway)))
            )
        }
        if let assets = gateway.configuration.webAssets {
            for (path, file) in assets.files {
                router.get(RouterPath(path)) { _, _ in
                    Response(
                        status: .ok,
                        headers: [.contentType: file.contentType, .cacheControl: "no-cache"],
                        body: ResponseBody(byteBuffer: file.body)
                    )
                }
            }
        }
    }

    static func jsonResponse(_ status: HTTPResponse.Status, _ body: String) -> Response {
        Response(
            status: status,
            headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: body))
        )
    }
}

/// The JSON body of an HTTP error: `{"error":"unauthorized","message":…}`.
enum HTTPErrorBody {
    static func json(status: HTTPResponse.Status, message: String) -> String {
        let name = String(status.reasonPhrase.lowercased().map { $0 == " " ? "_" : $0 })
        var text = #"{"error":"#
        JSONText.appendQuoted(name, to: &text)
        text += #","message":"#
        JSONText.appendQuoted(message, to: &text)
        return text + "}"
    }
}
