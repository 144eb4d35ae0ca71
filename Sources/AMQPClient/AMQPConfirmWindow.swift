/// Publishes awaiting their publisher confirm, by delivery tag (the Kafka `sendAndAwait` shape).
///
/// Tags count up from 1 per channel after `confirm.select`. A `basic.return` for a tag
/// arrives before its `basic.ack`, so the ack completes it as returned.
///
/// A publish whose deadline passes is answered with `timedOut` at once but stays in the
/// window (answered) until the broker acks or nacks it: it is still in the socket or at
/// the broker, so the window keeps counting it, and what is written but unconfirmed stays
/// bounded by the window size even while the broker confirms nothing.
struct AMQPConfirmWindow {
    private struct Pending {
        let tag: UInt64
        let deadline: ContinuousClock.Instant
        let completion: AMQPConnection.PublishCompletion
        var returned: (code: UInt16, text: String)?
        /// Already answered (timed out): the ack or nack only frees its slot.
        var answered = false
    }

    private var pending: [Pending] = []
    /// Pending entries at the front that are answered already (timed out in order).
    private var answeredPrefix = 0
    private(set) var nextTag: UInt64 = 1

    /// Written and not acked or nacked yet, answered or not: the window's occupancy.
    var count: Int { pending.count }

    /// Some publishes timed out and the broker has not acked them yet: it is still not confirming.
    var holdsTimedOut: Bool { answeredPrefix > 0 }

    /// The deadline of the oldest publish still waiting for its answer.
    var firstDeadline: ContinuousClock.Instant? {
        pending.dropFirst(answeredPrefix).first { !$0.answered }?.deadline
    }

    mutating func add(deadline: ContinuousClock.Instant, _ completion: @escaping AMQPConnection.PublishCompletion) {
        pending.append(Pending(tag: nextTag, deadline: deadline, completion: completion))
        nextTag += 1
    }

    mutating func markReturned(tag: UInt64, replyCode: UInt16, replyText: String) {
        guard let index = pending.firstIndex(where: { $0.tag == tag }) else { return }
        pending[index].returned = (replyCode, replyText)
    }

    mutating func acknowledge(tag: UInt64, multiple: Bool) {
        for entry in take(tag: tag, multiple: multiple) where !entry.answered {
            if let returned = entry.returned {
                entry.completion(.success(.returned(replyCode: returned.code, replyText: returned.text)))
            } else {
                entry.completion(.success(.confirmed))
            }
        }
    }

    mutating func reject(tag: UInt64, multiple: Bool) {
        for entry in take(tag: tag, multiple: multiple) where !entry.answered {
            entry.completion(.failure(AMQPError(.nacked, "the broker rejected the message (basic.nack)")))
        }
    }

    /// Answers every publish whose deadline is `now` or earlier with `timedOut`.
    mutating func expire(now: ContinuousClock.Instant, timeout: Duration) {
        // Deadlines grow with tags (publishes are written in the order they were accepted).
        var index = answeredPrefix
        while index < pending.count {
            if !pending[index].answered {
                guard pending[index].deadline <= now else { break }
                pending[index].answered = true
                pending[index].completion(
                    .failure(AMQPError(.timedOut, "no confirm from the broker within \(timeout); the message may still be delivered"))
                )
            }
            index += 1
            answeredPrefix = index
        }
    }

    mutating func failAll(_ error: AMQPError) {
        let all = pending
        pending = []
        answeredPrefix = 0
        for entry in all where !entry.answered { entry.completion(.failure(error)) }
    }

    private mutating func take(tag: UInt64, multiple: Bool) -> [Pending] {
        if multiple {
            let end = pending.firstIndex { $0.tag > tag } ?? pending.count
            let taken = Array(pending[..<end])
            pending.removeFirst(end)
            answeredPrefix = max(0, answeredPrefix - end)
            return taken
        }
        guard let index = pending.firstIndex(where: { $0.tag == tag }) else { return [] }
        if index < answeredPrefix { answeredPrefix -= 1 }
        return [pending.remove(at: index)]
    }
}
