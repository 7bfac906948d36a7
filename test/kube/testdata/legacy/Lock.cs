// Mirrors Metaparticle Sync's .NET client (metaparticle-io/sync,
// dotnet/Metaparticle.Sync/Lock.cs and Election.cs), written anew for tests
// and built with Mono's mcs. The same System.Net.Http calls, a new
// HttpClient for every request, as the original:
//
//   AcquireLock: GET /locks/NAME (Accept: application/json, User-Agent:
//                Metaparticle Sync Client); on 404 or 200 PUT /locks/NAME
//                with no content; on PUT 200 hold the lock.
//   WaitOne:     AcquireLock, else wait the period and try again. An
//                exception (a refused connection) is not caught: it ends
//                the program (here: ERROR, exit 1).
//   HoldLock:    the listener's LockAcquired, then a maintainer task: while
//                running: GET; on 200 PUT; if not 200, print it and, with a
//                listener (election), call LockLost and stop; without one
//                (lock mode) the original's Environment.Exit is commented
//                out, so it goes on renewing; wait the period. An exception
//                faults the task: the renewals stop silently (here: ERROR).
//
// Election.cs takes this Lock with itself as listener; election mode prints
// LEADER and LOST. Lock mode prints ACQUIRED, and LOST on a non-200 while
// holding, then goes on as the original does.
//
// Usage: mono lock.exe BASE_URL NAME PERIOD_MS lock|election
using System;
using System.Net;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Threading;
using System.Threading.Tasks;

public class MirrorLock {
    readonly string url;
    readonly int period; // the original's WAIT_INTERVAL, 10 s
    readonly bool election;
    static readonly object output = new object();

    MirrorLock(string baseUri, string name, int period, bool election) {
        this.url = baseUri + "/locks/" + name;
        this.period = period;
        this.election = election;
    }

    static void Say(string line) {
        lock (output) {
            Console.WriteLine(line);
            Console.Out.Flush();
        }
    }

    HttpClient NewClient() {
        var client = new HttpClient();
        client.DefaultRequestHeaders.Accept.Clear();
        client.DefaultRequestHeaders.Accept.Add(new MediaTypeWithQualityHeaderValue("application/json"));
        client.DefaultRequestHeaders.Add("User-Agent", "Metaparticle Sync Client");
        return client;
    }

    HttpStatusCode GetLock() {
        using (var client = NewClient()) {
            var code = client.GetAsync(url).Result.StatusCode;
            Say("GET " + (int) code);
            return code;
        }
    }

    HttpStatusCode UpdateLock() {
        using (var client = NewClient()) {
            var code = client.PutAsync(url, null).Result.StatusCode;
            Say("PUT " + (int) code);
            return code;
        }
    }

    bool AcquireLock() {
        var code = GetLock();
        if (code == HttpStatusCode.NotFound || code == HttpStatusCode.OK) {
            code = UpdateLock();
        }
        if (code == HttpStatusCode.OK) {
            HoldLock();
            return true;
        }
        return false;
    }

    void WaitOne() {
        while (!AcquireLock()) {
            Thread.Sleep(period);
        }
    }

    void HoldLock() {
        Say(election ? "LEADER" : "ACQUIRED");
        Task.Run(async () => {
            try {
                while (true) {
                    var code = GetLock();
                    if (code == HttpStatusCode.OK) {
                        code = UpdateLock();
                    }
                    if (code != HttpStatusCode.OK) {
                        Say("LOST");
                        if (election) {
                            return;
                        }
                    }
                    await Task.Delay(period);
                }
            } catch (Exception ex) {
                Say("ERROR " + ex.GetBaseException().Message);
            }
        });
    }

    public static int Main(string[] args) {
        try {
            new MirrorLock(args[0], args[1], int.Parse(args[2]), args[3] == "election").WaitOne();
        } catch (Exception ex) {
            Say("ERROR " + ex.GetBaseException().Message);
            return 1;
        }
        Thread.Sleep(Timeout.Infinite); // live on, as the application would
        return 0;
    }
}
