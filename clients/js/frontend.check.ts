// A frontend's use of the client, checked by `tsc -p clients/js` against genjobs.d.ts.
import { createClient, GenJobsError, type Job } from "./genjobs.js";

// supabase-js's shape, as a frontend has it: `supabase.auth.getSession()`.
declare const supabase: {
  auth: { getSession(): Promise<{ data: { session: { access_token: string } | null } }> };
};

const genjobs = createClient({
  baseUrl: "http://127.0.0.1:8080",
  getToken: async () => (await supabase.auth.getSession()).data.session?.access_token,
});

export async function summarize(text: string, show: (text: string) => void): Promise<string> {
  const controller = new AbortController();
  try {
    const job: Job = await genjobs.generate(
      "summarize",
      { text },
      {
        onSubmit: (submitted) => console.log("job", submitted.id),
        onDelta: (_delta, soFar) => show(soFar),
        onReset: () => show(""),
      },
      { signal: controller.signal, metadata: { page: "home" } },
    );
    if (job.status !== "succeeded") return job.error?.message ?? job.status;
    return String(job.result);
  } catch (error) {
    if (error instanceof GenJobsError && error.status === 422) {
      return error.errors.map((e) => `${e.field}: ${e.message}`).join("\n");
    }
    throw error;
  }
}
