import Foundation
import SwitchboardServer
import SwitchboardTesting
import Testing

@Suite("The demo page and browser client at / and /switchboard.js")
struct WebAssetsTests {
    static let folder = packageRoot.appendingPathComponent("Sources/SwitchboardServer/Resources/web").path

    @Test("the gateway serves the page and the client from the web folder, and nothing else from it")
    func served() async throws {
        let assets = try WebAssets.load(from: Self.folder)
        try await withGateway(configure: { $0.webAssets = assets }) { gateway in
            let page = try await gateway.get("/")
            #expect(page.status == 200)
            #expect(page.body.contains(#"<script src="/switchboard.js""#))
            let client = try await gateway.get("/switchboard.js")
            #expect(client.status == 200)
            #expect(client.body.contains("Switchboard"))
            #expect(try await gateway.get("/index.html").status == 404)
            #expect(try await gateway.get("/../Package.swift").status == 404)
        }
    }

    @Test("without web assets / is a 404 and the gateway still works")
    func absent() async throws {
        try await withGateway(configure: { $0.webAssets = nil }) { gateway async throws in
            #expect(try await gateway.get("/").status == 404)
            #expect(try await gateway.get("/healthz").status == 200)
        }
    }

    @Test("a folder without the files is refused with the path in the error")
    func missingFolder() throws {
        #expect(throws: WebAssets.LoadError.self) { try WebAssets.load(from: "/nonexistent/web") }
    }
}
