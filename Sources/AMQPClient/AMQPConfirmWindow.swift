/// Publishes awaiting their publisher confirm, by delivery tag (the Kafka `sendAndAwait` shape).
///
/// Tags count up from 1 per channel after `confirm.select`. A `basic.return` for a tag
/// arrives before its `basic.ack`, so the ack completes it as returned.
struct AMQPConfirmWindow {
    private struct Pending {
        let tag: UInt64
        let completion: AMQPConnection.PublishCompletion
        var returned: (code: UInt16, text: String)?
    }

    private var pending: [Pending] = []
    private(set) var nextTag: UInt64 = 1

    var count: Int { pending.count }

    mutating func add(_ completion: @escaping AMQPConnection.PublishCompletion) {
        pending.append(Pending(tag: nextTag, completion: completion))
        nextTag += 1
    }

    mutating func markReturned(tag: UInt64, replyCode: UInt16, replyText: String) {
        guard let index = pending.firstIndex(where: { $0.tag == tag }) else { return }
        pending[index].returned = (replyCode, replyText)
    }

    mutating func acknowledge(tag: UInt64, multiple: Bool) {
        for entry in take(tag: tag, multiple: multiple) {
            if let returned = entry.returned {
                entry.completion(.success(.returned(replyCode: returned.code, replyText: returned.text)))
            } else {
                entry.completion(.success(.confirmed))
            }
        }
    }

    mutating func reject(tag: UInt64, multiple: Bool) {
        for entry in take(tag: tag, multiple: multiple) {
            entry.completion(.failure(AMQPError(.nacked, "the broker rejected the message (basic.nack)")))
        }
    }

    mutating func failAll(_ error: AMQPError) {
        let all = pending
        pending = []
        for entry in all { entry.completion(.failure(error)) }
    }

    private mutating func take(tag: UInt64, multiple: Bool) -> [Pending] {
        if multiple {
            let end = pending.firstIndex { $0.tag > tag } ?? pending.count
            let taken = Array(pending[..<end])
            pending.removeFirst(end)
            return taken
        }
        guard let index = pending.firstIndex(where: { $0.tag == tag }) else { return [] }
        return [pending.remove(at: index)]
    }
}
