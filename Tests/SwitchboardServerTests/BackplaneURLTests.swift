import SwitchboardBackplane
import Testing

/// `--backplane` parsing as far as the library goes: the scheme picks the kind, and
/// every refusal says why without the password.
@Suite("BackplaneURL: which backplane a --backplane value names")
struct BackplaneURLTests {
    @Test(
        "each scheme maps to its kind and the URL is kept as given",
        arguments: [
            ("memory", BackplaneURL.Kind.memory),
            ("memory://", .memory),
            ("amqp://guest:guest@127.0.0.1:5672/", .rabbitMQ),
            ("amqps://broker.example:5671/vhost", .rabbitMQ),
            ("redis://:secret@127.0.0.1:6379?mode=broadcast", .redis),
            ("rediss://cache.example:6380", .redis),
            ("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster", .redis),
        ]
    )
    func kinds(value: String, kind: BackplaneURL.Kind) throws {
        let url = try BackplaneURL(parsing: value)
        #expect(url.kind == kind)
        #expect(url.url == value)
        #expect(BackplaneURL.kind(of: value) == kind)
    }

    @Test("a comma-separated list names the nodes of a RabbitMQ cluster; a comma in a password stays with its URL")
    func clusterLists() throws {
        let list = try BackplaneURL(parsing: "amqp://u:p@10.0.0.1:5672/,amqps://u:p,q@10.0.0.2:5671/, amqp://10.0.0.3/")
        #expect(list.kind == .rabbitMQ)
        #expect(list.urls == ["amqp://u:p@10.0.0.1:5672/", "amqps://u:p,q@10.0.0.2:5671/", "amqp://10.0.0.3/"])
        #expect(try BackplaneURL(parsing: "amqp://h/").urls == ["amqp://h/"])
        #expect(try BackplaneURL(parsing: "memory").urls == ["memory"])
        // A Sentinel URL's host list is one URL, not a list of backplanes.
        #expect(try BackplaneURL(parsing: "redis+sentinel://h1:26379,h2:26379/m").urls == ["redis+sentinel://h1:26379,h2:26379/m"])
        for value in ["amqp://h1/,redis://h2:6379", "redis://h1:6379,redis://h2:6379", "amqp://h1/,kafka://h2/"] {
            #expect(throws: BackplaneURLError.self, "\(value)") { try BackplaneURL(parsing: value) }
        }
        // A raw reserved character in any one of them is refused, and no password is shown.
        let error = #expect(throws: BackplaneURLError.self) { try BackplaneURL(parsing: "amqp://u:ok@h1/,amqp://u:se/cret@h2/") }
        #expect(error?.description.contains("cret") == false)
    }

    @Test("an unknown scheme is refused with the scheme named and the password redacted")
    func unsupported() {
        #expect(throws: BackplaneURLError.unsupportedScheme("kafka://guest:secret@127.0.0.1:5672/", scheme: "kafka")) {
            try BackplaneURL(parsing: "kafka://guest:secret@127.0.0.1:5672/")
        }
        let error = BackplaneURLError.unsupportedScheme("kafka://guest:secret@127.0.0.1:5672/", scheme: "kafka")
        #expect(
            error.description
                == "unsupported backplane 'kafka://guest:***@127.0.0.1:5672/' (scheme 'kafka'): use 'memory', amqp://, amqps:// or redis://"
        )
        for value in ["", "memory:", "AMQP://127.0.0.1/", "nats://127.0.0.1:4222", "127.0.0.1:5672"] {
            #expect(BackplaneURL.kind(of: value) == nil, "\(value)")
            #expect(throws: BackplaneURLError.self, "\(value)") { try BackplaneURL(parsing: value) }
        }
    }

    @Test("a raw '/', '?' or '#' in the credentials is refused before any backplane parses the URL")
    func reservedCharacters() throws {
        for value in ["amqp://guest:se/cret@127.0.0.1:5672/", "redis://:se?cret@127.0.0.1:6379", "rediss://se#cret@127.0.0.1:6380"] {
            do {
                _ = try BackplaneURL(parsing: value)
                Issue.record("\(value) was accepted")
            } catch {
                guard case .invalid(let url, let reason) = error else {
                    Issue.record("\(value): \(error)")
                    continue
                }
                #expect(url == value)
                #expect(reason.contains("percent-encode"))
                #expect(error.description.hasPrefix("invalid backplane URL '"))
                #expect(!error.description.contains("cret"), "\(error)")
            }
        }
        // Percent-encoded, the same credentials are fine.
        #expect(try BackplaneURL(parsing: "amqp://guest:se%2Fcret@127.0.0.1:5672/").kind == .rabbitMQ)
    }

    @Test("what a backplane's own parser refuses is reported with the URL redacted")
    func invalid() {
        let error = BackplaneURLError.invalid("amqp://guest:secret@127.0.0.1:99999/", reason: "invalid port")
        #expect(error.description == "invalid backplane URL 'amqp://guest:***@127.0.0.1:99999/': invalid port")
    }
}
