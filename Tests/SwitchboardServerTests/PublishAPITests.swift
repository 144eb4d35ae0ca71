import Foundation
import NIOCore
import SwitchboardBackplane
import SwitchboardServer
import SwitchboardTesting
import Synchronization
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// An EventSink that remembers what it was given.
final class RecordingEventSink: EventSink {
    let events = Mutex<[String]>([])
    func clientMessage(_ frame: ByteBuffer, to address: BackplaneAddress) {
        events.withLock { $0.append("\(address.routingKey) \(String(buffer: frame))") }
    }
    func undelivered(_ frame: ByteBuffer, to address: BackplaneAddress) {
        events.withLock { $0.append("undelivered.\(address.routingKey) \(String(buffer: frame))") }
    }
}

@Suite("POST /v1/publish and the worker events sink")
struct PublishAPITests {
    static let key = "test-key-0123456789abcdef"

    static func post(_ gateway: RunningGateway, _ body: String, key: String? = PublishAPITests.key) async throws -> (status: Int, body: String) {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(gateway.port)/v1/publish")!)
        request.httpMethod = "POST"
        request.httpBody = Data(body.utf8)
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        if let key { request.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization") }
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }

    @Test("off without --api-key; 401 for a missing or wrong key")
    func authentication() async throws {
        try await withGateway(configure: { _ in }) { gateway async throws in
            #expect(try await Self.post(gateway, #"{"user":"bob","data":1}"#).status == 404)
        }
        try await withGateway(configure: { $0.apiKeys = [Self.key] }) { gateway in
            #expect(try await Self.post(gateway, #"{"user":"bob","data":1}"#, key: nil).status == 401)
            let wrong = try await Self.post(gateway, #"{"user":"bob","data":1}"#, key: Self.key + "x")
            #expect(wrong.status == 401 && wrong.body.contains(#""error":"unauthorized""#))
            #expect(try await Self.post(gateway, #"{"user":"bob","data":1}"#, key: String(Self.key.dropLast())).status == 401)
            let metrics = try await MetricsTests.scrape(gateway)
            #expect(metrics[#"switchboard_auth_failures_total{reason="api_key"}"#] == 3)
        }
    }

    @Test("to a user, a room and everyone: 202 with the outcome, frames as documented, data byte for byte")
    func publishes() async throws {
        try await withGateway(configure: { $0.apiKeys = ["other-key-0123456789", Self.key] }) { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            try await bob.send(#"{"type":"join","room":"lobby"}"#)
            _ = try await bob.next()

            let direct = try await Self.post(gateway, #"{"user":"bob","data":{"n": 1.50}}"#)
            #expect(direct.status == 202)
            #expect(direct.body == #"{"outcome":"routed","address":"user.bob"}"#)
            #expect(try await bob.nextText() == #"{"type":"direct","from":"server","to":"bob","data":{"n": 1.50}}"#)

            let offline = try await Self.post(gateway, #"{"user":"carol","data":1}"#)
            #expect(offline.status == 202 && offline.body.contains(#""outcome":"recipient_offline""#))

            #expect(try await Self.post(gateway, #"{"room":"lobby","from":"billing","data":"due"}"#).status == 202)
            #expect(try await bob.nextText() == #"{"type":"room","room":"lobby","from":"billing","data":"due"}"#)
            try await alice.expectSilence(for: .milliseconds(50))

            #expect(try await Self.post(gateway, #"{"broadcast":true,"data":"maintenance at 5"}"#).status == 202)
            let everyone = #"{"type":"broadcast","from":"server","data":"maintenance at 5"}"#
            #expect(try await alice.nextText() == everyone)
            #expect(try await bob.nextText() == everyone)
            let metrics = try await MetricsTests.scrape(gateway)
            #expect(metrics[#"switchboard_api_publishes_total{outcome="routed"}"#] == 3)
            #expect(metrics[#"switchboard_api_publishes_total{outcome="recipient_offline"}"#] == 1)
        }
    }

    @Test("400 for a bad body, 413 for a big one, 503 while the backplane is down")
    func refusals() async throws {
        let backplane = SwitchableBackplane()
        try await withGateway(
            backplane: backplane,
            configure: {
                $0.apiKeys = [Self.key]
                $0.maximumMessageSize = 256
            }
        ) { gateway in
            for body in [
                "not json", "[1]", #"{"data":1}"#, #"{"user":"bob"}"#, #"{"user":"bob","room":"r","data":1}"#,
                #"{"broadcast":false,"data":1}"#, #"{"user":"","data":1}"#, #"{"user":5,"data":1}"#, #"{"user":"bob","from":"\u0001","data":1}"#,
            ] {
                let answer = try await Self.post(gateway, body)
                #expect(answer.status == 400, "\(body)")
                #expect(answer.body.contains(#""error":"bad_request""#), "\(body)")
            }
            let big = #"{"user":"bob","data":""# + String(repeating: "x", count: 300) + #""}"#
            #expect(try await Self.post(gateway, big).status == 413)
            backplane.isDown.store(true, ordering: .relaxed)
            #expect(try await Self.post(gateway, #"{"user":"bob","data":1}"#).status == 503)
        }
    }

    @Test("client messages are copied to the events sink, undelivered ones twice; API publishes are not")
    func eventsSink() async throws {
        let sink = RecordingEventSink()
        try await withGateway(configure: {
            $0.apiKeys = [Self.key]
            $0.events = sink
        }) { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            try await alice.send(#"{"type":"direct","to":"bob","data":1}"#)
            _ = try await bob.next()
            _ = try await alice.next()
            try await alice.send(#"{"type":"direct","to":"carol","data":2}"#)
            #expect(try await alice.next()["code"] == "recipient_offline")
            try await alice.send(#"{"type":"join","room":"lobby"}"#)
            _ = try await alice.next()
            try await alice.send(#"{"type":"publish","room":"lobby","data":3}"#)
            _ = try await alice.next()
            _ = try await alice.next()
            #expect(try await Self.post(gateway, #"{"user":"bob","data":4}"#).status == 202)
            _ = try await bob.next()
            #expect(
                sink.events.withLock { $0 } == [
                    #"user.bob {"type":"direct","from":"alice","to":"bob","data":1}"#,
                    #"user.carol {"type":"direct","from":"alice","to":"carol","data":2}"#,
                    #"undelivered.user.carol {"type":"direct","from":"alice","to":"carol","data":2}"#,
                    #"room.lobby {"type":"room","room":"lobby","from":"alice","data":3}"#,
                ]
            )
        }
    }

    @Test("without a configured sink the gateway uses the one its backplane offers; the in-memory backplane offers none")
    func backplaneEventSink() async throws {
        #expect(InMemoryBackplane().eventSink == nil)
        let sink = RecordingEventSink()
        try await withGateway(backplane: SwitchableBackplane(eventSink: sink)) { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            try await alice.send(#"{"type":"direct","to":"bob","data":1,"id":"1"}"#)
            _ = try await bob.next()
            #expect(try await alice.next()["type"] == "ack")
            #expect(sink.events.withLock { $0 } == [#"user.bob {"type":"direct","from":"alice","to":"bob","data":1}"#])
        }
    }
}

@Suite("GET /v1/history and backend publishes with history")
struct HistoryAPITests {
    static func get(_ gateway: RunningGateway, _ query: String, key: String? = PublishAPITests.key) async throws -> (status: Int, body: [String: Any])
    {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(gateway.port)/v1/history?\(query)")!)
        if let key { request.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization") }
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:])
    }

    @Test("a backend publish to an offline user is kept with its offset; the history API returns it; bad queries are 400, no key 401, no history 404")
    func history() async throws {
        try await withGateway(configure: {
            $0.apiKeys = [PublishAPITests.key]
            $0.history = MemoryHistory()
            $0.recoveryLimit = 50
        }) { gateway in
            for index in 1...3 {
                let published = try await PublishAPITests.post(gateway, #"{"user":"bob","data":\#(index)}"#)
                #expect(published.status == 202)
                #expect(
                    published.body.contains(#""outcome":"recipient_offline""#) && published.body.contains(#""offset":\#(index),"#),
                    "\(published.body)"
                )
            }
            let all = try await Self.get(gateway, "user=bob")
            #expect(all.status == 200)
            #expect(all.body["stream"] as? String == "user.bob")
            #expect(all.body["complete"] as? Bool == true)
            let messages = try #require(all.body["messages"] as? [[String: Any]])
            #expect(messages.map { $0["data"] as? Int } == [1, 2, 3])
            #expect(messages.map { $0["offset"] as? Int } == [1, 2, 3])
            #expect((all.body["position"] as? [String: Any])?["offset"] as? Int == 3)
            let page = try await Self.get(gateway, "user=bob&since=1&limit=1")
            #expect((page.body["messages"] as? [[String: Any]])?.map { $0["offset"] as? Int } == [2])

            // Bob connects and resumes from before the first: all three, then recovered.
            let bob = try await TestClient.connect(port: gateway.port, path: "/ws?user=bob")
            let welcome = try await bob.next()
            #expect(welcome.position?.offset == 3)
            try await bob.send(#"{"type":"resume","since":{"epoch":"\#(welcome.position!.epoch)","offset":0},"id":"r"}"#)
            for index in 1...3 {
                let frame = try await bob.next()
                #expect(frame["data"] == "\(index)")
            }
            #expect(try await bob.next()["recovered"] == "1")

            for query in ["", "user=bob&room=lobby", "user=", "user=bob&since=-1", "user=bob&since=x", "user=bob&limit=0", "user=bob&limit=51"] {
                #expect(try await Self.get(gateway, query).status == 400, "\(query)")
            }
            #expect(try await Self.get(gateway, "user=bob", key: nil).status == 401)
        }
        try await withGateway(configure: { $0.apiKeys = [PublishAPITests.key] }) { gateway async throws in
            #expect(try await Self.get(gateway, "user=bob").status == 404)
        }
    }
}
