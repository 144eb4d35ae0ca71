/// Removes credentials from broker URLs before they reach a log line or an error.
///
/// Every form a `--backplane` value can take is covered: `amqp://user:pass@host`,
/// `amqps://…`, `redis://:pass@host`, `redis://user:pass@host`, `redis://pass@host` (a lone
/// user part is the password to Redis), passwords holding reserved characters written
/// raw (`?`, `/`, `#`, `,`), and several URLs separated by commas.
package enum CredentialRedaction {
    /// `value` with the password of every URL in it replaced by `***`; a user name is
    /// kept when one is written before a `:`.
    package static func redact(_ value: String) -> String {
        urls(in: value).map(redactOne).joined(separator: ",")
    }

    /// Whether a URL's user or password holds `/`, `?` or `#` written raw: such a URL
    /// cannot be parsed as its author meant (and parsers would quote part of the password
    /// back in their errors), so it is refused before parsing with this explanation.
    package static func reservedCharacterProblem(in url: String) -> String? {
        guard let schemeEnd = url.firstRange(of: "://"), let at = url[schemeEnd.upperBound...].lastIndex(of: "@") else { return nil }
        let userInfo = url[schemeEnd.upperBound..<at]
        guard userInfo.contains(where: { $0 == "/" || $0 == "?" || $0 == "#" }) else { return nil }
        return "the URL's user or password holds a raw '/', '?' or '#': percent-encode them (%2F, %3F, %23)"
    }

    /// Splits a comma-separated list of URLs; a comma inside a password (no `scheme://`
    /// after it) stays with its URL, so the whole password is redacted.
    static func urls(in value: String) -> [String] {
        var result: [String] = []
        for piece in value.split(separator: ",", omittingEmptySubsequences: false) {
            if let last = result.last, !startsWithScheme(piece) {
                result[result.count - 1] = last + "," + piece
            } else {
                result.append(String(piece))
            }
        }
        return result
    }

    private static func startsWithScheme(_ text: Substring) -> Bool {
        let trimmed = text.drop { $0 == " " }
        guard let end = trimmed.firstRange(of: "://") else { return false }
        let scheme = trimmed[..<end.lowerBound]
        return !scheme.isEmpty
            && scheme.utf8.allSatisfy { byte in
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "+") || byte == UInt8(ascii: ".")
                    || byte == UInt8(ascii: "-")
            }
    }

    private static func redactOne(_ url: String) -> String {
        // Everything up to the last '@' is user information, whatever it holds: redacting
        // too much is harmless, too little is not.
        guard let schemeEnd = url.firstRange(of: "://"), let at = url[schemeEnd.upperBound...].lastIndex(of: "@") else { return url }
        let userInfo = url[schemeEnd.upperBound..<at]
        let prefix = String(url[..<schemeEnd.upperBound])
        if let colon = userInfo.firstIndex(of: ":") {
            let user = userInfo[..<colon]
            // A user part that itself looks like it holds reserved characters may be a password.
            if user.contains(where: { $0 == "/" || $0 == "?" || $0 == "#" }) { return prefix + "***" + url[at...] }
            return prefix + user + ":***" + url[at...]
        }
        return prefix + "***" + url[at...]
    }
}
