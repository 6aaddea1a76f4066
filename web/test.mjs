// Opens the demo in headless Chromium, waits for #result and exits non-zero unless training
// finished with a test accuracy of at least MIN_ACCURACY.
// Usage: node test.mjs URL  (env: CHROMIUM, MIN_ACCURACY, TIMEOUT_S, SCREENSHOT)
import { chromium } from 'playwright-core';

const url = process.argv[2];
const minAccuracy = Number(process.env.MIN_ACCURACY ?? 0.9);
const timeoutMs = 1000 * Number(process.env.TIMEOUT_S ?? 300);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: [
    // WebGPU without a GPU: Dawn on SwiftShader's Vulkan (the only combination that gave an
    // adapter here; lavapipe through --use-vulkan=native failed to create a Vulkan instance).
    '--enable-unsafe-webgpu',
    '--enable-features=Vulkan',
    '--use-vulkan=swiftshader',
    '--use-webgpu-adapter=swiftshader',
    // A closed network: without these Chromium keeps trying to reach Google's hosts.
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
let code = 1;
try {
  const page = await browser.newPage();
  page.on('console', (m) => console.log(`[page] ${m.text()}`));
  page.on('pageerror', (e) => console.log(`[page error] ${e}`));
  const t0 = Date.now();
  await page.goto(url);
  const result = await page
    .waitForFunction(
      () => {
        const r = document.getElementById('result')?.textContent ?? '';
        return r.startsWith('done') || r.startsWith('error') ? r : null;
      },
      null,
      { timeout: timeoutMs, polling: 250 },
    )
    .then((h) => h.jsonValue())
    .catch((e) => `error: no result within ${timeoutMs / 1000} s (${e.message.split('\n')[0]})`);
  const gpu = await page.textContent('#gpu');
  const adapter = await page.textContent('#adapter');
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  console.log(`WebGPU adapter: ${gpu}`);
  console.log(`portagrad device: ${adapter}`);
  console.log(`result: ${result} (${((Date.now() - t0) / 1000).toFixed(1)} s in the page)`);
  const acc = Number(/^done accuracy=([0-9.]+)/.exec(result)?.[1]);
  if (acc >= minAccuracy) {
    code = 0;
  } else {
    console.log(`FAIL: wanted "done accuracy=X" with X >= ${minAccuracy}`);
  }
} finally {
  await browser.close();
}
process.exit(code);
