import SwitchboardProtocol
import Testing

@Suite("Routing-key words")
struct RoutingWordTests {
    @Test("plain ids are their own word", arguments: ["bob", "Alice_01", "a-b-c", "0", String(repeating: "x", count: 128)])
    func plainIDs(id: String) throws {
        #expect(RoutingWord.encode(try UserID(validating: id)) == id)
    }

    @Test(
        "ids outside [A-Za-z0-9_-] are ~base64url of their UTF-8",
        arguments: [
            ("bob.smith", "~Ym9iLnNtaXRo"),
            ("*", "~Kg"),
            ("#", "~Iw"),
            ("a b", "~YSBi"),
            ("é", "~w6k"),
            ("user.*.#", "~dXNlci4qLiM"),
            ("~bob", "~fmJvYg"),
            ("日本", "~5pel5pys"),
        ]
    )
    func encodedIDs(id: String, word: String) throws {
        let encoded = RoutingWord.encode(try RoomID(validating: id))
        #expect(encoded == word)
        #expect(RoutingWord.decode(encoded).map(bytes) == bytes(id))
    }

    @Test("a word is one routing-key word and never a wildcard")
    func wordsAreSafe() throws {
        let hostile = ["#", "*", "a.b", "user.bob", "*.#", "..", " ", "\u{2028}", "😀", "a#b*c", String(repeating: "é", count: 64)]
        for id in hostile {
            let word = RoutingWord.encode(try UserID(validating: id))
            #expect(!word.contains("."), "\(id) → \(word)")
            #expect(!word.contains("*"), "\(id) → \(word)")
            #expect(!word.contains("#"), "\(id) → \(word)")
            #expect(word.utf8.allSatisfy { $0 < 0x80 }, "\(id) → \(word)")
            #expect(RoutingWord.decode(word).map(bytes) == bytes(id))
        }
    }

    @Test("the longest id still makes a routing key AMQP accepts (≤ 255 bytes)")
    func longestKeyFits() throws {
        let id = String(repeating: "é", count: 64)  // 128 bytes, not plain
        let word = RoutingWord.encode(try UserID(validating: id))
        #expect(("user." + word).utf8.count <= 255)
        #expect(word.utf8.count == 1 + 171)
    }

    @Test("distinct ids never share a word, canonically equivalent ones included")
    func injective() throws {
        let ids = [
            "a", "~YQ", "A", "a.", ".a", "a ", "YQ", "~a", "-", "_",
            // Equal under Swift's `String ==` (canonical equivalence), different bytes.
            "Kate", "\u{212A}ate", "\u{E9}", "e\u{301}", "\u{C5}", "\u{212B}",
        ]
        #expect(Set(ids.map(bytes)).count == ids.count, "the ids are distinct byte strings")
        let words = try ids.map { RoutingWord.encode(try UserID(validating: $0)) }
        #expect(Set(words.map(bytes)).count == ids.count)
        for (id, word) in zip(ids, words) {
            #expect(RoutingWord.decode(word).map(bytes) == bytes(id))
        }
    }

    @Test(
        "ids are equal and hash alike only when their UTF-8 bytes are equal",
        arguments: [("Kate", "\u{212A}ate"), ("\u{E9}", "e\u{301}"), ("\u{C5}", "\u{212B}")]
    )
    func canonicallyEquivalentIDsDiffer(plain: String, equivalent: String) throws {
        #expect(plain == equivalent, "Swift's String == calls these equal")
        #expect(try UserID(validating: plain) != UserID(validating: equivalent))
        #expect(try RoomID(validating: plain) != RoomID(validating: equivalent))
        #expect(try Set([UserID(validating: plain), UserID(validating: equivalent)]).count == 2)
        #expect(try [RoomID(validating: plain): 1, RoomID(validating: equivalent): 2].count == 2)
        #expect(try BackplaneAddressLike.user(UserID(validating: plain)) != .user(UserID(validating: equivalent)))
        #expect(try UserID(validating: plain) == UserID(validating: String(plain)))
    }

    @Test("decode refuses what encode never produces")
    func decodeRejects() {
        #expect(RoutingWord.decode("") == nil)
        #expect(RoutingWord.decode("a.b") == nil)
        #expect(RoutingWord.decode("~a") == nil)  // 1 base64 digit is no byte
        #expect(RoutingWord.decode("~+/") == nil)  // standard base64 alphabet, not url-safe
    }
}

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// An enum with an id payload, as `BackplaneAddress` and `LocalAddress` are: synthesized
/// equality must follow the ids' byte equality.
private enum BackplaneAddressLike: Hashable {
    case user(UserID)
}

@Suite("Identifier rules")
struct IdentifierTests {
    @Test("empty, over-long and control-character ids are refused")
    func invalidIDs() {
        #expect(throws: IdentifierError.empty) { try UserID(validating: "") }
        #expect(throws: IdentifierError.tooLong(utf8Length: 129)) { try UserID(validating: String(repeating: "a", count: 129)) }
        #expect(throws: IdentifierError.tooLong(utf8Length: 130)) { try RoomID(validating: String(repeating: "é", count: 65)) }
        #expect(throws: IdentifierError.tooLong(utf8Length: 10_240)) { try RoomID(validating: String(repeating: "x", count: 10_240)) }
        for bad in ["a\u{0}b", "\n", "tab\there", "del\u{7F}", "c1\u{85}", "\u{9F}"] {
            #expect(throws: IdentifierError.controlCharacter) { try UserID(validating: bad) }
        }
    }

    @Test("128 bytes of UTF-8, any script, dots and wildcards are valid ids")
    func validIDs() throws {
        _ = try UserID(validating: String(repeating: "a", count: 128))
        _ = try UserID(validating: String(repeating: "é", count: 64))
        _ = try RoomID(validating: "#general.*")
        _ = try RoomID(validating: "a b")
    }
}
