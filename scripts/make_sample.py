"""Generate the sample project under sftgate/sample/ (seeded, byte-for-byte reproducible).

The knowledge base is the internal handbook of an invented company, 瀚海數位股份有限公司
(Hanhai Digital), mostly in Traditional Chinese with some English documents. Each document is
rendered from facts (form codes, numbers, deadlines, contacts, steps) in prose, lists and tables;
every question is generated from one fact (or two, for cross-document questions), so its evidence
is a sentence that appears verbatim in the rendered document.

    python scripts/make_sample.py            # (re)write sftgate/sample/
    python scripts/make_sample.py --check    # regenerate into a temp dir and compare
"""

from __future__ import annotations

import argparse
import filecmp
import json
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_prose import CASES_EN, CASES_ZH, DEPTS_EN, FAQ, NAMES_EN, PARAGRAPHS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sftgate" / "sample"
SEED = 20261125
REFUSAL_ZH = "知識庫中沒有足夠資訊回答此問題。"
REFUSAL_EN = "The knowledge base does not contain enough information to answer this question."


@dataclass
class Fact:
    """One thing a question can ask about. `sentence` appears verbatim in the document."""

    doc: str
    section: str
    sentence: str
    answer: str
    questions: list[str]  # several phrasings; v1 and v2 take different ones
    detail: str = ""  # extra sentence(s) for detailed_description
    lang: str = "zh"
    kind: str = "fact"


@dataclass
class Doc:
    path: str
    title: str
    lang: str
    intro: str
    sections: list[tuple[str, list[str]]] = field(default_factory=list)  # (heading, blocks)

    def render(self) -> str:
        out = [f"# {self.title}", "", self.intro, ""]
        for heading, blocks in self.sections:
            out += [f"## {heading}", ""]
            for b in blocks:
                out += [b, ""]
        return "\n".join(out).rstrip() + "\n"


ORG = "瀚海數位"
DEPTS = [
    "資訊服務處",
    "人力資源處",
    "財務處",
    "總務處",
    "資訊安全室",
    "法務室",
    "研發中心",
    "業務部",
]
PEOPLE = [
    "林怡君",
    "陳冠廷",
    "黃雅婷",
    "張家豪",
    "李佩珊",
    "王俊傑",
    "吳欣怡",
    "劉建宏",
    "蔡宜蓁",
    "楊志明",
    "許淑芬",
    "鄭宇翔",
]
ZH_NUM = "零一二三四五六七八九十"


def zh_num(n: int) -> str:
    if n <= 10:
        return ZH_NUM[n]
    if n < 20:
        return "十" + (ZH_NUM[n - 10] if n % 10 else "")
    if n < 100:
        return ZH_NUM[n // 10] + "十" + (ZH_NUM[n % 10] if n % 10 else "")
    return str(n)


# ----------------------------------------------------------------------------- IT services

IT_SERVICES = [
    ("vpn", "VPN 遠端連線", "遠端連線帳號", "在家或出差時連回公司內網"),
    ("email", "電子郵件", "郵件信箱", "收發公司郵件與行事曆邀請"),
    ("laptop", "筆記型電腦配發", "公務筆電", "日常辦公與開發工作"),
    ("printer", "印表機與掃描", "列印額度", "列印、影印與掃描文件"),
    ("software", "軟體安裝", "軟體授權", "安裝經核准的商用軟體"),
    ("wifi", "無線網路", "訪客 Wi-Fi 帳號", "讓訪客在會議期間上網"),
    ("meeting", "視訊會議", "視訊會議室", "與外部客戶召開線上會議"),
    ("drive", "雲端硬碟", "部門共用空間", "存放部門共用文件"),
    ("phone", "公務手機", "公務門號", "業務與值班聯絡"),
    ("account", "帳號與密碼", "網域帳號", "登入公司各項系統"),
    ("git", "程式碼倉庫", "GitLab 專案", "管理原始碼與程式審查"),
    ("repair", "設備報修", "報修工單", "回報電腦與周邊設備故障"),
    ("backup", "資料備份與還原", "備份空間", "還原誤刪或損毀的檔案"),
    ("mobile", "行動裝置管理", "行動裝置註冊", "在手機上收發公司郵件"),
    ("sso", "單一登入", "SSO 應用程式授權", "以同一組帳號登入各系統"),
]


def it_docs(rng: random.Random) -> tuple[list[Doc], list[Fact]]:
    docs, facts = [], []
    for i, (slug, name, thing, purpose) in enumerate(IT_SERVICES):
        path = f"it/{slug}.md"
        form = f"IT-{i + 3:02d}"
        days = rng.choice([1, 2, 3, 5])
        approver = rng.choice(["直屬主管", "部門經理", "處級主管"])
        ext = rng.randint(2100, 2199)
        owner = rng.choice(PEOPLE)
        quota = rng.choice([20, 50, 100, 200, 500])
        hours = rng.choice(
            ["週一至週五 8:30 至 18:00", "週一至週五 9:00 至 17:30", "每日 8:00 至 20:00"]
        )
        renew = rng.choice([6, 12, 24])
        steps = rng.sample(
            [
                "登入員工入口網站並點選「服務申請」",
                f"選擇「{name}」並填寫 {form} 申請單",
                f"由{approver}於系統中簽核",
                "資訊服務處收件後排定處理",
                "開通完成後以郵件通知申請人",
                "申請人於首次使用時完成雙因素驗證設定",
            ],
            k=4,
        )
        steps = sorted(
            steps,
            key=lambda s: ["登入", "選擇", "由", "資訊", "開通", "申請人"].index(
                next(k for k in ["登入", "選擇", "由", "資訊", "開通", "申請人"] if s.startswith(k))
            ),
        )
        intro = rng.choice(
            [
                f"本文件說明{name}服務的申請、使用規範與支援方式，適用於{ORG}全體正式員工與約聘人員。",
                f"{name}是資訊服務處提供的標準服務之一，主要用於{purpose}。以下整理申請流程與注意事項。",
                f"為了讓同仁能順利{purpose}，資訊服務處制定本{name}作業說明，請於申請前詳閱。",
            ]
        )
        s_form = f"申請{thing}須填寫 {form} 申請單，並經{approver}核准。"
        s_days = f"資訊服務處於核准後 {days} 個工作天內完成開通。"
        s_quota = (
            f"每位同仁的{thing}上限為 {quota} GB，超過時須另行申請擴充。"
            if slug in ("email", "drive", "git")
            else f"每位同仁的{thing}每月額度為 {quota} 單位，未用完的額度不會累積到下個月。"
        )
        s_renew = f"{thing}的有效期限為 {renew} 個月，到期前 14 天系統會寄發續用通知。"
        s_contact = f"本服務的負責窗口為{owner}，分機 {ext}，服務時間為{hours}。"
        step_list = "\n".join(f"{n}. {s}" for n, s in enumerate(steps, 1))
        doc = Doc(path, f"{name}服務說明", "zh", intro)
        doc.sections.append(("申請方式", [s_form + s_days, "申請步驟如下：", step_list]))
        doc.sections.append(
            (
                "使用規範",
                [
                    s_quota,
                    s_renew,
                    rng.choice(
                        [
                            f"請勿將{thing}借給他人使用；如發現異常登入，應立即通報資訊安全室。",
                            f"離職或調職時，{thing}將於最後工作日由系統自動停用。",
                            f"使用{' ' * name[0].isascii()}{name}時應遵守《資訊安全政策》，禁止用於私人營利用途。",
                        ]
                    ),
                ],
            )
        )
        table = "| 項目 | 說明 |\n| --- | --- |\n" + "\n".join(
            [
                f"| 申請表單 | {form} |",
                f"| 核准者 | {approver} |",
                f"| 處理時間 | {days} 個工作天 |",
                f"| 負責窗口 | {owner}（分機 {ext}） |",
            ]
        )
        doc.sections.append(("服務摘要", [table]))
        doc.sections.append(
            ("聯絡窗口", [s_contact, "非服務時間的緊急問題，請撥打 24 小時值班專線 0800-123-456。"])
        )
        docs.append(doc)
        facts += [
            Fact(
                path,
                "申請方式",
                s_form,
                f"填寫 {form} 申請單，並經{approver}核准。",
                [
                    f"申請{thing}要填哪一張表單？",
                    f"我想申請{name}，需要哪個表單編號、誰要核准？",
                    f"{thing}的申請單是哪一份？核准者是誰？",
                ],
                s_days,
            ),
            Fact(
                path,
                "申請方式",
                s_days,
                f"核准後 {days} 個工作天內。",
                [
                    f"{thing}申請核准後多久會開通？",
                    f"{name}從核准到開通需要幾個工作天？",
                    f"資訊服務處處理{thing}申請要多久？",
                ],
                s_form,
            ),
            Fact(
                path,
                "使用規範",
                s_quota,
                s_quota.split("，")[0].replace("每位同仁的", "每人") + "。",
                [
                    f"{thing}的上限是多少？",
                    f"每個人的{thing}額度有多少？",
                    f"{name}有沒有使用上限？是多少？",
                ],
                "",
            ),
            Fact(
                path,
                "使用規範",
                s_renew,
                f"{renew} 個月。",
                [
                    f"{thing}的有效期限是多久？",
                    f"{thing}多久要續用一次？",
                    f"{name}的{thing}用多久會到期？",
                ],
                "到期前 14 天系統會寄發續用通知。",
            ),
            Fact(
                path,
                "聯絡窗口",
                s_contact,
                f"{owner}，分機 {ext}。",
                [
                    f"{name}有問題要找誰？分機幾號？",
                    f"{name}服務的負責窗口是誰？",
                    f"誰負責{thing}的相關問題，怎麼聯絡？",
                ],
                f"服務時間為{hours}。",
            ),
            Fact(
                path,
                "申請方式",
                step_list.split("\n")[0][3:],
                "；".join(steps) + "。",
                [
                    f"申請{name}的步驟是什麼？",
                    f"請說明{thing}的申請流程。",
                    f"{name}要怎麼一步步申請？",
                ],
                "",
                kind="procedure",
            ),
        ]
        # Procedures: the evidence is every step line.
        facts[-1].sentence = "\n".join(steps)
    return docs, facts


# ----------------------------------------------------------------------------- HR rules

# (leave, slug, proof for long leave, days rule, its short answer, notice in working days, pay):
# close to Taiwan's Labor Standards Act and leave rules, as a real handbook would restate them.
LEAVES = [
    (
        "特別休假",
        "annual",
        "主管核准之休假計畫",
        "到職滿六個月以上未滿一年者，給予特別休假三日；滿一年以上未滿二年者，給予七日。",
        "滿六個月未滿一年三日；滿一年未滿二年七日。",
        3,
        "全薪",
    ),
    (
        "病假",
        "sick",
        "醫療院所證明",
        "未住院者，病假一年內合計以 30 日為上限。",
        "每年 30 日。",
        1,
        "半薪",
    ),
    (
        "事假",
        "personal",
        "相關證明文件",
        "事假一年內合計以 14 日為上限。",
        "每年 14 日。",
        2,
        "不給薪",
    ),
    ("婚假", "marriage", "喜帖或結婚證書影本", "員工結婚者給予婚假 8 日。", "8 日。", 7, "全薪"),
    (
        "喪假",
        "bereavement",
        "訃聞或死亡證明影本",
        "父母、養父母、繼父母或配偶喪亡者，給予喪假 8 日。",
        "父母或配偶喪亡 8 日。",
        1,
        "全薪",
    ),
    (
        "產假",
        "maternity",
        "醫療院所證明",
        "女性員工分娩前後，給予產假 56 日。",
        "56 日（八星期）。",
        5,
        "全薪",
    ),
    (
        "陪產檢及陪產假",
        "paternity",
        "出生證明或產檢紀錄影本",
        "員工於配偶妊娠產檢或分娩時，給予陪產檢及陪產假 7 日。",
        "7 日。",
        3,
        "全薪",
    ),
    (
        "生理假",
        "menstrual",
        "相關證明文件",
        "女性員工每月得請生理假 1 日，全年以 12 日為上限。",
        "每月 1 日，全年 12 日。",
        1,
        "半薪",
    ),
    (
        "家庭照顧假",
        "family",
        "家屬就醫或照顧需求證明",
        "家庭照顧假每年以 7 日為上限，併入事假計算。",
        "每年 7 日。",
        1,
        "不給薪",
    ),
    (
        "公假",
        "official",
        "主管核准之公文",
        "公假依實際需要的天數核給。",
        "依實際需要的天數核給。",
        3,
        "全薪",
    ),
]


def hr_docs(rng: random.Random) -> tuple[list[Doc], list[Fact]]:
    docs, facts = [], []
    # One document per leave type, plus a handful of policy documents.
    for leave, slug, proof, s_days, days_answer, notice, pay in LEAVES:
        path = f"hr/leave/{slug}.md"
        system = "HR-Link 人資系統"
        doc = Doc(
            path,
            f"{leave}規定",
            "zh",
            f"本規定依勞動法令及{ORG}工作規則訂定，說明{leave}的天數、請假程序與薪資計算方式。",
        )
        s_notice = f"申請{leave}應於 {notice} 個工作日前在 {system}提出，臨時請假者須於當日上班時間開始後兩小時內通知主管。"
        s_pay = f"{leave}期間工資以{pay}計算。"
        s_proof = f"連續請{leave}超過三日者，應於銷假後五個工作日內補附{proof}。"
        doc.sections.append(
            (
                "天數",
                [
                    s_days,
                    rng.choice(
                        [
                            "未休完的天數不得遞延至次年度。",
                            "年度內未休完者依規定折算工資。",
                            "請假以半日為最小單位。",
                        ]
                    ),
                ],
            )
        )
        doc.sections.append(("請假程序", [s_notice, s_proof]))
        doc.sections.append(
            (
                "薪資計算",
                [
                    s_pay,
                    "| 假別 | 薪資 | 證明文件 |\n| --- | --- | --- |\n"
                    + f"| {leave} | {pay} | {proof} |",
                ],
            )
        )
        docs.append(doc)
        facts += [
            Fact(
                path,
                "天數",
                s_days,
                days_answer,
                [
                    f"{leave}一年最多可以請幾天？",
                    f"{leave}的天數上限是多少？",
                    f"公司規定的{leave}有幾天？",
                ],
            ),
            Fact(
                path,
                "請假程序",
                s_notice,
                f"{notice} 個工作日前在 {system}提出。",
                [
                    f"{leave}要提前多久申請？",
                    f"請{leave}需要在幾天前提出？在哪裡申請？",
                    f"{leave}的申請期限是什麼？",
                ],
                "臨時請假者須於當日上班時間開始後兩小時內通知主管。",
            ),
            Fact(
                path,
                "薪資計算",
                s_pay,
                f"{pay}。",
                [
                    f"請{leave}會扣薪嗎？",
                    f"{leave}期間薪水怎麼算？",
                    f"{leave}是全薪、半薪還是不給薪？",
                ],
            ),
            Fact(
                path,
                "請假程序",
                s_proof,
                f"銷假後五個工作日內補附{proof}。",
                [
                    f"連續請{leave}超過三天要附什麼文件？",
                    f"{leave}需要補什麼證明？期限是？",
                    f"請長天數的{leave}要交哪些證明？",
                ],
            ),
        ]
    policies = [
        (
            "hr/attendance.md",
            "出勤管理辦法",
            [
                (
                    "上班時間",
                    "本公司採彈性上班制，核心工作時間為 10:00 至 16:00，每日應工作滿八小時。",
                    "核心工作時間是 10:00 至 16:00。",
                    [
                        "公司的核心工作時間是幾點到幾點？",
                        "彈性上班的核心時段是什麼時候？",
                        "每天一定要在公司的時段是？",
                    ],
                ),
                (
                    "加班",
                    "平日加班須事先於 HR-Link 提出加班申請，每月加班時數上限為 46 小時。",
                    "每月上限 46 小時，須事先申請。",
                    [
                        "每個月最多可以加班幾小時？",
                        "加班時數上限是多少？",
                        "加班要怎麼申請，有上限嗎？",
                    ],
                ),
                (
                    "遲到",
                    "每月遲到累計超過三次者，由人力資源處寄發出勤提醒通知。",
                    "每月遲到累計超過三次。",
                    [
                        "遲到幾次會收到出勤提醒？",
                        "什麼情況下人資會寄出勤提醒通知？",
                        "一個月遲到超過幾次會被提醒？",
                    ],
                ),
            ],
        ),
        (
            "hr/onboarding.md",
            "新進人員報到指南",
            [
                (
                    "報到當天",
                    "新進人員應於報到當天上午 9:00 至 7 樓人力資源處辦理報到手續。",
                    "上午 9:00 到 7 樓人力資源處。",
                    ["新人報到要幾點到哪裡？", "第一天上班要去哪裡報到？", "報到手續在幾樓辦理？"],
                ),
                (
                    "應備文件",
                    "報到時應繳交身分證影本、最高學歷證書影本、薪資轉帳帳戶存摺影本及二吋照片兩張。",
                    "身分證影本、最高學歷證書影本、薪資轉帳帳戶存摺影本及二吋照片兩張。",
                    ["報到需要帶哪些文件？", "新人要準備什麼資料？", "報到時要繳交的東西有哪些？"],
                ),
                (
                    "試用期",
                    "新進人員試用期為三個月，試用期滿前兩週由直屬主管完成考核。",
                    "三個月。",
                    ["試用期有多長？", "新人的試用期是幾個月？", "試用期考核什麼時候做？"],
                ),
            ],
        ),
        (
            "hr/performance.md",
            "績效考核制度",
            [
                (
                    "考核週期",
                    "績效考核每半年辦理一次，分別於每年 6 月及 12 月進行。",
                    "每半年一次，6 月及 12 月。",
                    ["績效考核多久一次？", "考核是在哪幾個月？", "公司一年做幾次績效評核？"],
                ),
                (
                    "考核等第",
                    "考核結果分為 A、B、C、D 四個等第，A 等比例以部門人數的 15% 為上限。",
                    "A 等以部門人數的 15% 為上限。",
                    [
                        "考核 A 等的比例上限是多少？",
                        "績效等第有哪幾種？A 等最多幾成？",
                        "部門裡最多多少比例可以拿 A？",
                    ],
                ),
                (
                    "申訴",
                    "對考核結果有異議者，得於結果公布後 10 個工作日內向人力資源處提出申訴。",
                    "結果公布後 10 個工作日內向人力資源處提出。",
                    [
                        "對考核結果不滿意怎麼辦？",
                        "考核申訴的期限是幾天？",
                        "要向哪個單位申訴考核結果？",
                    ],
                ),
            ],
        ),
        (
            "hr/training.md",
            "教育訓練補助辦法",
            [
                (
                    "補助額度",
                    "每位員工每年的外部訓練補助上限為新臺幣 30,000 元。",
                    "每年新臺幣 30,000 元。",
                    [
                        "外部訓練一年最多補助多少錢？",
                        "教育訓練補助上限是多少？",
                        "參加外部課程公司可以補助多少？",
                    ],
                ),
                (
                    "申請時間",
                    "外部訓練補助應於開課前 15 日以 HR-12 表單提出申請。",
                    "開課前 15 日以 HR-12 表單提出。",
                    [
                        "訓練補助要在什麼時候申請？",
                        "外訓補助用哪張表單？",
                        "上課前幾天要申請訓練補助？",
                    ],
                ),
                (
                    "服務義務",
                    "單次補助金額超過新臺幣 20,000 元者，結訓後應於公司服務滿一年。",
                    "應於公司服務滿一年。",
                    [
                        "補助超過兩萬元有什麼義務？",
                        "拿了高額訓練補助要留任多久？",
                        "訓練補助的服務義務是什麼？",
                    ],
                ),
            ],
        ),
        (
            "hr/remote_work.md",
            "遠距工作辦法",
            [
                (
                    "適用對象",
                    "到職滿三個月且經主管同意之員工，每週可申請遠距工作至多兩日。",
                    "每週至多兩日，需到職滿三個月且經主管同意。",
                    ["每週可以在家工作幾天？", "誰可以申請遠距工作？", "遠距工作有什麼條件？"],
                ),
                (
                    "申請方式",
                    "遠距工作應於前一週週五前在 HR-Link 登記。",
                    "前一週週五前在 HR-Link 登記。",
                    [
                        "遠距工作要什麼時候登記？",
                        "在家上班要在哪裡申請？",
                        "遠距工作的登記期限是？",
                    ],
                ),
                (
                    "工作要求",
                    "遠距工作期間應於核心工作時間內保持通訊軟體在線，並能在 30 分鐘內回覆訊息。",
                    "30 分鐘內回覆訊息。",
                    [
                        "遠距工作時多久內要回訊息？",
                        "在家工作有什麼在線要求？",
                        "遠距期間回覆訊息的時限是？",
                    ],
                ),
            ],
        ),
    ]
    for path, title, sections in policies:
        doc = Doc(path, title, "zh", f"本辦法適用於{ORG}全體員工，由人力資源處負責解釋與修訂。")
        for heading, sentence, answer, qs in sections:
            doc.sections.append(
                (
                    heading,
                    [
                        sentence,
                        rng.choice(
                            [
                                "如有疑問請洽人力資源處分機 2301。",
                                "本條文自 2026 年 1 月 1 日起施行。",
                                "特殊情形由處級主管專案核定。",
                            ]
                        ),
                    ],
                )
            )
            facts.append(Fact(path, heading, sentence, answer, qs))
        docs.append(doc)
    return docs, facts


# ----------------------------------------------------------------------------- finance, facilities, security

FIN = [
    (
        "finance/expenses.md",
        "費用報銷作業",
        [
            (
                "報銷期限",
                "各項費用應於支出發生日起 30 日內檢附發票辦理報銷，逾期不予受理。",
                "支出發生日起 30 日內。",
                ["費用報銷的期限是多久？", "發票要在幾天內報帳？", "超過多久就不能報銷了？"],
            ),
            (
                "核決權限",
                "單筆金額新臺幣 5,000 元以下由部門主管核准，超過 5,000 元者須再經財務處審核。",
                "5,000 元以下部門主管核准，超過者再經財務處審核。",
                [
                    "多少錢以下部門主管就能核准報銷？",
                    "報銷金額超過五千元要誰審核？",
                    "報帳的核決權限怎麼分？",
                ],
            ),
            (
                "付款時間",
                "報銷款項於每月 10 日及 25 日兩次匯入員工薪資帳戶。",
                "每月 10 日及 25 日。",
                ["報銷的錢什麼時候會入帳？", "費用報銷款幾號撥款？", "報帳後哪天匯款？"],
            ),
        ],
    ),
    (
        "finance/travel.md",
        "國內出差旅費規定",
        [
            (
                "住宿",
                "國內出差住宿費每晚上限為新臺幣 2,800 元，臺北市與新北市為 3,200 元。",
                "每晚 2,800 元，臺北市與新北市 3,200 元。",
                [
                    "國內出差住宿費上限多少？",
                    "在臺北出差每晚可以報多少住宿？",
                    "出差住飯店的額度是？",
                ],
            ),
            (
                "交通",
                "搭乘高鐵以標準車廂為限，主管級以上得搭乘商務車廂。",
                "標準車廂；主管級以上得搭商務車廂。",
                [
                    "出差搭高鐵可以坐商務車廂嗎？",
                    "高鐵車廂等級有什麼規定？",
                    "誰可以搭高鐵商務艙？",
                ],
            ),
            (
                "膳雜費",
                "出差膳雜費每日定額新臺幣 600 元，當日往返者為 300 元。",
                "每日 600 元，當日往返 300 元。",
                ["出差的膳雜費一天多少？", "當天來回的出差有多少膳雜費？", "出差餐費怎麼補助？"],
            ),
        ],
    ),
    (
        "finance/procurement.md",
        "採購作業辦法",
        [
            (
                "請購",
                "單筆採購金額達新臺幣 100,000 元以上者，應取得三家以上廠商報價。",
                "應取得三家以上廠商報價。",
                [
                    "採購超過十萬要幾家報價？",
                    "大額採購需要比價嗎？",
                    "請購金額多少以上要三家報價？",
                ],
            ),
            (
                "驗收",
                "採購物品應於到貨後 7 日內由請購單位完成驗收。",
                "到貨後 7 日內。",
                [
                    "採購的東西到貨後多久要驗收？",
                    "驗收期限是幾天？",
                    "誰負責驗收採購品，期限多久？",
                ],
            ),
            (
                "付款條件",
                "廠商貨款原則上採月結 60 天付款。",
                "月結 60 天。",
                ["公司付廠商貨款的條件是？", "廠商多久可以收到貨款？", "採購付款是月結幾天？"],
            ),
        ],
    ),
    (
        "finance/petty_cash.md",
        "零用金管理要點",
        [
            (
                "額度",
                "各部門零用金額度為新臺幣 10,000 元，單筆支出以 3,000 元為上限。",
                "部門 10,000 元，單筆上限 3,000 元。",
                ["部門零用金有多少？", "零用金單筆最多能花多少？", "零用金的額度規定是？"],
            ),
            (
                "撥補",
                "零用金保管人應於每月最後一個工作日前檢據向財務處申請撥補。",
                "每月最後一個工作日前。",
                ["零用金什麼時候申請撥補？", "零用金保管人何時要檢據？", "撥補零用金的期限是？"],
            ),
        ],
    ),
]
FAC = [
    (
        "facilities/meeting_rooms.md",
        "會議室借用規則",
        [
            (
                "預約",
                "會議室須透過 Outlook 行事曆預約，單次預約以四小時為上限。",
                "透過 Outlook 行事曆，單次上限四小時。",
                ["會議室要怎麼預約？", "一次最多能借會議室多久？", "借會議室有時數限制嗎？"],
            ),
            (
                "取消",
                "無法使用時應於會議開始前一小時取消預約，每月未取消而未到達累計三次者，停權兩週。",
                "會議開始前一小時取消；未到三次停權兩週。",
                [
                    "會議室不用了要多久前取消？",
                    "預約會議室沒到會怎樣？",
                    "會議室停權的規則是什麼？",
                ],
            ),
            (
                "大型會議室",
                "12 樓大禮堂可容納 120 人，須於兩週前向總務處申請。",
                "可容納 120 人，須兩週前向總務處申請。",
                ["大禮堂可以坐多少人？", "借 12 樓大禮堂要多早申請？", "公司最大的會議空間在哪？"],
            ),
        ],
    ),
    (
        "facilities/parking.md",
        "停車場管理辦法",
        [
            (
                "月租車位",
                "員工月租車位每月收費新臺幣 1,500 元，以抽籤方式每半年分配一次。",
                "每月 1,500 元，每半年抽籤一次。",
                ["員工停車位一個月多少錢？", "停車位怎麼分配？", "月租車位多久抽一次？"],
            ),
            (
                "機車",
                "機車停車位免費，須於總務處登記車牌並領取識別貼紙。",
                "免費，須登記車牌並領取識別貼紙。",
                ["騎機車停公司要錢嗎？", "機車停車要登記什麼？", "機車識別貼紙去哪領？"],
            ),
            (
                "訪客",
                "訪客車輛須由接待同仁於前一日在訪客系統登記，停車以四小時為限。",
                "前一日登記，限四小時。",
                ["客戶來訪可以停車嗎？", "訪客停車要怎麼登記？", "訪客車輛能停多久？"],
            ),
        ],
    ),
    (
        "facilities/office.md",
        "辦公環境管理",
        [
            (
                "門禁",
                "辦公大樓門禁時間為每日 7:00 至 22:00，其他時間進出須事先向總務處申請。",
                "每日 7:00 至 22:00。",
                ["辦公室幾點可以進出？", "晚上十點後還能進公司嗎？", "大樓門禁時間是？"],
            ),
            (
                "空調",
                "空調於上班日 8:00 至 19:00 開放，加班需延長空調者應於當日 16:00 前通知總務處。",
                "當日 16:00 前通知總務處。",
                ["加班要開冷氣怎麼辦？", "空調開放時間是幾點？", "延長空調要多早通知？"],
            ),
            (
                "失物",
                "拾獲物品請送至 1 樓服務台，保管期限為 30 日。",
                "送 1 樓服務台，保管 30 日。",
                ["撿到東西要交到哪裡？", "失物會保管多久？", "遺失物招領在哪裡？"],
            ),
        ],
    ),
    (
        "facilities/mail.md",
        "郵件與包裹收發",
        [
            (
                "收件",
                "寄給員工的包裹由 1 樓收發室代收，並以郵件通知收件人於三日內領取。",
                "1 樓收發室代收，三日內領取。",
                ["包裹寄到公司由誰收？", "收發室的包裹要幾天內領？", "公司代收包裹的規定？"],
            ),
            (
                "寄件",
                "公務寄件請填寫 GA-05 寄件單，每日 15:30 前交件者當日寄出。",
                "填 GA-05 寄件單，15:30 前交件當日寄出。",
                ["要寄公務郵件怎麼辦？", "幾點前交件可以當天寄出？", "寄件單是哪一張？"],
            ),
        ],
    ),
]
SEC = [
    (
        "security/incident.md",
        "資訊安全事件通報程序",
        [
            (
                "通報時限",
                "發現疑似資訊安全事件時，應於一小時內通報資訊安全室。",
                "一小時內。",
                [
                    "發現資安事件要多久內通報？",
                    "疑似被駭要在多久內通知資安室？",
                    "資安事件的通報時限是？",
                ],
            ),
            (
                "通報方式",
                "通報可撥打資安專線分機 2999，或寄信至 security@hanhai.example。",
                "分機 2999 或 security@hanhai.example。",
                ["資安事件要打哪支電話？", "資安通報的信箱是什麼？", "怎麼聯絡資安室？"],
            ),
            (
                "分級",
                "資安事件依影響範圍分為一至四級，三級以上事件須於 24 小時內完成初步調查報告。",
                "24 小時內完成初步調查報告。",
                [
                    "三級資安事件多久要交調查報告？",
                    "資安事件分幾級？",
                    "嚴重資安事件的報告期限是？",
                ],
            ),
        ],
    ),
    (
        "security/password.md",
        "密碼政策",
        [
            (
                "複雜度",
                "密碼長度至少 12 個字元，並須包含大寫字母、小寫字母、數字及符號中的三種。",
                "至少 12 個字元，含四類中的三種。",
                ["密碼至少要幾個字？", "公司密碼有什麼複雜度要求？", "設定密碼的規則是什麼？"],
            ),
            (
                "更換",
                "密碼每 90 天須更換一次，且不得與前五次使用過的密碼相同。",
                "每 90 天，不得與前五次相同。",
                ["密碼多久要換一次？", "新密碼可以跟以前的一樣嗎？", "密碼更換週期是幾天？"],
            ),
            (
                "鎖定",
                "連續輸入錯誤密碼五次，帳號將鎖定 30 分鐘。",
                "錯誤五次鎖定 30 分鐘。",
                ["密碼打錯幾次會被鎖？", "帳號鎖定多久會解除？", "輸錯密碼的鎖定規則？"],
            ),
        ],
    ),
    (
        "security/data_classification.md",
        "資料分級與保護",
        [
            (
                "等級",
                "公司資料分為公開、內部、機密、極機密四個等級。",
                "公開、內部、機密、極機密。",
                ["公司資料分成哪幾級？", "資料分級有幾種？", "機密資料屬於第幾級？"],
            ),
            (
                "機密資料",
                "機密以上資料不得存放於個人雲端服務，傳送時須使用加密壓縮並另行告知密碼。",
                "不得存放於個人雲端，傳送須加密並另告密碼。",
                [
                    "機密資料可以放在個人雲端嗎？",
                    "傳送機密資料要注意什麼？",
                    "機密檔案怎麼寄出去？",
                ],
            ),
            (
                "銷毀",
                "極機密紙本文件應使用碎紙機銷毀，並填寫 SEC-09 銷毀紀錄。",
                "使用碎紙機並填寫 SEC-09 銷毀紀錄。",
                ["極機密文件怎麼銷毀？", "銷毀紀錄要填哪張表？", "紙本機密文件丟棄的規定？"],
            ),
        ],
    ),
    (
        "security/visitor.md",
        "訪客管理規定",
        [
            (
                "登記",
                "訪客應於 1 樓服務台出示證件換發訪客證，並全程由接待同仁陪同。",
                "出示證件換發訪客證，全程由接待同仁陪同。",
                ["訪客來公司要做什麼登記？", "訪客可以自己在辦公室走動嗎？", "訪客證在哪換？"],
            ),
            (
                "攝影",
                "訪客於研發區域內禁止攝影及錄音。",
                "禁止攝影及錄音。",
                ["訪客可以在研發區拍照嗎？", "研發區對訪客有什麼限制？", "客戶參觀可以錄影嗎？"],
            ),
        ],
    ),
]
EN = [
    (
        "en/travel_international.md",
        "International Travel Policy",
        [
            (
                "Approval",
                "International business trips must be approved by a division head at least 21 days before departure.",
                "By a division head, at least 21 days before departure.",
                [
                    "Who approves international business trips, and how early?",
                    "How far in advance must an overseas trip be approved?",
                    "What is the approval rule for travel abroad?",
                ],
            ),
            (
                "Flights",
                "Economy class is required for flights under six hours; premium economy is allowed for longer flights.",
                "Economy under six hours; premium economy for longer flights.",
                [
                    "Can I fly premium economy on business trips?",
                    "What class of flight is allowed for international travel?",
                    "Which cabin should I book for a five-hour flight?",
                ],
            ),
            (
                "Per diem",
                "The daily allowance abroad is USD 80, and USD 100 in Tokyo, Singapore and New York.",
                "USD 80 a day; USD 100 in Tokyo, Singapore and New York.",
                [
                    "What is the daily allowance for overseas travel?",
                    "How much per diem do I get in Tokyo?",
                    "What is the per diem abroad?",
                ],
            ),
        ],
    ),
    (
        "en/code_of_conduct.md",
        "Code of Conduct",
        [
            (
                "Gifts",
                "Employees may not accept gifts worth more than TWD 1,000 from suppliers or customers.",
                "Gifts worth more than TWD 1,000.",
                [
                    "What gifts can I accept from a supplier?",
                    "Is there a limit on gifts from customers?",
                    "How much can a gift from a vendor be worth?",
                ],
            ),
            (
                "Conflicts of interest",
                "Any potential conflict of interest must be declared to Legal within 10 working days using form LG-02.",
                "Within 10 working days using form LG-02.",
                [
                    "How do I declare a conflict of interest?",
                    "Which form is used for conflict of interest declarations?",
                    "How soon must a conflict of interest be reported?",
                ],
            ),
            (
                "Reporting",
                "Concerns can be reported anonymously through the ethics hotline at extension 2888.",
                "Through the ethics hotline at extension 2888.",
                [
                    "How can I report an ethics concern anonymously?",
                    "What is the ethics hotline number?",
                    "Where do I report misconduct?",
                ],
            ),
        ],
    ),
    (
        "en/it_support.md",
        "IT Support for International Staff",
        [
            (
                "Help desk",
                "The IT help desk answers English requests at helpdesk@hanhai.example within one business day.",
                "Within one business day, at helpdesk@hanhai.example.",
                [
                    "How quickly does the IT help desk answer English requests?",
                    "What is the IT help desk email?",
                    "How do English-speaking staff contact IT?",
                ],
            ),
            (
                "Laptops",
                "Replacement laptops are issued within three business days after a hardware fault is confirmed.",
                "Within three business days.",
                [
                    "How long does it take to get a replacement laptop?",
                    "When is a new laptop issued after a hardware fault?",
                    "What is the laptop replacement time?",
                ],
            ),
        ],
    ),
    (
        "en/benefits.md",
        "Employee Benefits Overview",
        [
            (
                "Health check",
                "Employees are entitled to a free annual health check worth up to TWD 6,000.",
                "Up to TWD 6,000, once a year.",
                [
                    "Is there a free health check?",
                    "How much is the annual health check worth?",
                    "What health check benefit do employees get?",
                ],
            ),
            (
                "Wellness",
                "The wellness subsidy is TWD 3,000 per year for gym memberships or sports classes.",
                "TWD 3,000 per year.",
                [
                    "How much is the wellness subsidy?",
                    "Does the company pay for gym memberships?",
                    "What does the wellness subsidy cover?",
                ],
            ),
            (
                "Employee stock",
                "Employees may join the stock purchase plan after one year of service, contributing up to 10% of monthly salary.",
                "After one year, up to 10% of monthly salary.",
                [
                    "When can I join the employee stock purchase plan?",
                    "How much of my salary can go into the stock plan?",
                    "What are the rules of the stock purchase plan?",
                ],
            ),
        ],
    ),
    (
        "en/remote_access.md",
        "Remote Access Guidelines",
        [
            (
                "MFA",
                "Multi-factor authentication is mandatory for all remote access, using the Hanhai Authenticator app.",
                "Mandatory, with the Hanhai Authenticator app.",
                [
                    "Is MFA required for remote access?",
                    "Which app is used for multi-factor authentication?",
                    "How do I authenticate for remote access?",
                ],
            ),
            (
                "Public networks",
                "Connecting to company systems from public Wi-Fi is only allowed through the VPN.",
                "Only through the VPN.",
                [
                    "Can I use public Wi-Fi to access company systems?",
                    "Is the VPN required on public networks?",
                    "What is the rule for public Wi-Fi?",
                ],
            ),
        ],
    ),
]
FILLERS_ZH = [
    "本文件由權責單位每年檢視一次，修訂時將於公司公告欄及內部網站同步公告。",
    "各部門主管應確保所屬同仁了解並遵守本規定。",
    "本規定未盡事宜，依公司相關辦法及法令辦理。",
    "如規定內容與法令牴觸，以法令規定為準。",
    "同仁可於內部網站的「規章制度」專區下載最新版本。",
]
FILLERS_EN = [
    "This document is reviewed once a year by its owner; changes are announced on the intranet.",
    "Managers are responsible for making sure their teams know and follow these rules.",
    "Where this policy and local law differ, local law applies.",
]


def policy_docs(rng: random.Random) -> tuple[list[Doc], list[Fact]]:
    docs, facts = [], []
    for group, lang in ((FIN, "zh"), (FAC, "zh"), (SEC, "zh"), (EN, "en")):
        for path, title, sections in group:
            owner = {"finance": "財務處", "facilities": "總務處", "security": "資訊安全室"}.get(
                path.split("/")[0], "Human Resources"
            )
            intro = (
                f"本文件由{owner}訂定，說明{title}的相關規定與作業流程。"
                if lang == "zh"
                else f"This document, owned by {owner}, sets out the {title.lower()} of Hanhai Digital."
            )
            doc = Doc(path, title, lang, intro)
            fillers = FILLERS_ZH if lang == "zh" else FILLERS_EN
            for heading, sentence, answer, qs in sections:
                doc.sections.append((heading, [sentence, rng.choice(fillers)]))
                facts.append(Fact(path, heading, sentence, answer, qs, lang=lang))
            doc.sections.append(
                (
                    "版本紀錄" if lang == "zh" else "Revision history",
                    [
                        "| 版本 | 日期 | 說明 |\n| --- | --- | --- |\n| 1.0 | 2024-03-01 | 初版 |\n| 1.1 | 2025-07-15 | 配合組織調整修訂 |"
                        if lang == "zh"
                        else "| Version | Date | Change |\n| --- | --- | --- |\n| 1.0 | 2024-05-01 | First issue |\n| 1.2 | 2025-09-10 | Updated amounts |"
                    ],
                )
            )
            docs.append(doc)
    return docs, facts


UNANSWERABLE = [
    ("員工餐廳週三的菜單是什麼？", "zh"),
    ("公司尾牙會在哪一家飯店舉辦？", "zh"),
    ("董事長的生日是哪一天？", "zh"),
    ("公司股票代號是多少？", "zh"),
    ("明年的調薪幅度是多少？", "zh"),
    ("健身房的淋浴間有幾間？", "zh"),
    ("What is the CEO's mobile phone number?", "en"),
    ("When is the next company offsite?", "en"),
    ("What is the Wi-Fi password for the guest network today?", "en"),
    ("Which stock exchange lists the company?", "en"),
]


def cross_doc_facts(
    facts: list[Fact], rng: random.Random, n: int = 60, phrasing: int = 0
) -> list[Fact]:
    """Questions whose answer spans two documents: two facts asked together, each in its
    `phrasing` (v1's phrasing 0 for the shared cross facts, v2's phrasing 1 for v2's own)."""
    out = []
    pairs = [
        (a, b)
        for a in facts
        for b in facts
        if a.doc < b.doc and a.lang == b.lang == "zh" and a.kind == b.kind == "fact"
    ]
    rng.shuffle(pairs)
    for a, b in pairs[:n]:
        qa, qb = a.questions[phrasing].rstrip("？"), b.questions[phrasing].rstrip("？")
        out.append(
            Fact(
                a.doc + "|" + b.doc,
                a.section + "|" + b.section,
                a.sentence + "\n" + b.sentence,
                a.answer.rstrip("。") + "；" + b.answer,
                [f"{qa}？另外，{qb}？", f"請一併回答：{qa}，以及{qb}？", f"兩個問題：{qa}？{qb}？"],
                kind="cross",
            )
        )
    return out


def to_question(qid: str, fact: Fact, phrasing: str) -> dict:
    docs = fact.doc.split("|")
    evidence = [s for s in fact.sentence.split("\n") if s.strip()]
    detail = (
        fact.answer + (" " if fact.lang == "en" else "") + " ".join(evidence)
        if fact.kind == "procedure"
        else " ".join(dict.fromkeys(evidence + ([fact.detail] if fact.detail else [])))
    )
    return {
        "id": qid,
        "question": phrasing,
        "reference": {
            "answer": fact.answer,
            "detailed_description": detail,
            "original_evidence": evidence,
            "source_paths": docs,
        },
    }


def unanswerable_question(qid: str, text: str, lang: str) -> dict:
    refusal, detail = (
        (REFUSAL_ZH, "員工手冊中沒有提到這項資訊。")
        if lang == "zh"
        else (REFUSAL_EN, "The handbook does not mention this.")
    )
    return {
        "id": qid,
        "question": text,
        "reference": {
            "answer": refusal,
            "detailed_description": detail,
            "original_evidence": [],
            "source_paths": [],
        },
    }


def domain(path: str) -> str:
    top = path.split("/")[0]
    return {
        "it": "it",
        "hr": "hr",
        "finance": "finance",
        "facilities": "facilities",
        "security": "security",
    }.get(top, "en")


def enrich(doc: Doc, rng: random.Random) -> None:
    """Add background paragraphs, worked cases and an FAQ: realistic bulk nothing asks about."""
    d = domain(doc.path)
    zh = doc.lang == "zh"
    paras = rng.sample(PARAGRAPHS[d], k=min(len(PARAGRAPHS[d]), rng.randint(6, 8)))
    doc.sections.insert(0, ("背景與適用範圍" if zh else "Background", paras[:2]))
    doc.sections.append(("補充說明" if zh else "Further notes", paras[2:]))
    cases = []
    for template in rng.sample(CASES_ZH if zh else CASES_EN, k=rng.randint(3, 4)):
        date = (
            f"2025 年 {rng.randint(1, 12)} 月 {rng.randint(1, 28)} 日"
            if zh
            else f"{rng.randint(1, 28)} {rng.choice(['March', 'May', 'August', 'October'])} 2025"
        )
        who = rng.choice(PEOPLE) if zh else rng.choice(NAMES_EN)
        dept = rng.choice(DEPTS) if zh else rng.choice(DEPTS_EN)
        cases.append(template.format(who=who, dept=dept, date=date))
    doc.sections.append(("案例說明" if zh else "Examples", cases))
    faq = rng.sample(FAQ[d], k=len(FAQ[d]))
    doc.sections.append(
        (
            "常見問題" if zh else "FAQ",
            [f"**問：{q}**\n答：{a}" if zh else f"**Q: {q}**\nA: {a}" for q, a in faq],
        )
    )


def build(out: Path) -> None:
    rng = random.Random(SEED)
    docs: list[Doc] = []
    facts: list[Fact] = []
    for maker in (it_docs, hr_docs, policy_docs):
        d, f = maker(rng)
        docs += d
        facts += f
    facts += cross_doc_facts(facts, rng)
    titles = {doc.path: doc.title for doc in docs}
    for doc in docs:
        enrich(doc, rng)
        related = rng.sample(
            sorted(p for p in titles if p != doc.path and domain(p) == domain(doc.path)), k=3
        )
        doc.sections.append(
            (
                "相關文件" if doc.lang == "zh" else "Related documents",
                ["\n".join(f"- [{titles[p]}](/{p})" for p in related)],
            )
        )
    kb = out / "kb"
    for doc in docs:
        (kb / doc.path).parent.mkdir(parents=True, exist_ok=True)
        (kb / doc.path).write_text(doc.render(), encoding="utf-8")
    # v1 (train) and v2 (full eval) ask about the same facts with different phrasings: phrasing 0
    # for v1, phrasing 1 for v2, then phrasing 2 fills v2 up to 1,000 (v1's fill: below).
    v1, v2 = [], []
    for n, fact in enumerate(facts):
        v1.append(to_question(f"v1-{n:04d}", fact, fact.questions[0]))
        v2.append(to_question(f"v2-{n:04d}", fact, fact.questions[1]))
    extra = list(range(len(facts)))
    rng.shuffle(extra)
    k = 0
    # Once every fact has been asked in phrasing 2, v2 goes on with questions only it asks, so
    # that no question repeats: new two-document pairs in v2's phrasing, and v2's phrasing 1
    # asked from a situation. They draw from their own rng, so the gate's draw stays as it was.
    v2_rng = random.Random(SEED + 1)
    singles = [f for f in facts if f.kind != "cross"]
    v2_pairs = iter(cross_doc_facts(singles, v2_rng, n=1000, phrasing=1))
    situations = {
        "zh": ["我是新進同仁，想問", "同事請我幫忙確認：", "主管問到：", "替部門詢問："],
        "en": ["A new colleague asks: ", "Checking for my manager: ", "On behalf of my team: "],
    }
    used_pairs = {f.doc + f.sentence for f in facts if f.kind == "cross"}
    while len(v2) < 1000 - len(UNANSWERABLE) // 2:
        fact = facts[extra[k % len(extra)]]
        if k < len(extra):
            v2.append(to_question(f"v2-{len(v2):04d}", fact, fact.questions[2]))
        elif k % 2 == 0:
            pair = next(p for p in v2_pairs if p.doc + p.sentence not in used_pairs)
            v2.append(to_question(f"v2-{len(v2):04d}", pair, pair.questions[k % 3]))
        else:
            opener = situations[fact.lang][k % len(situations[fact.lang])]
            v2.append(to_question(f"v2-{len(v2):04d}", fact, opener + fact.questions[1]))
        k += 1
    # v1's fill asks facts again in v1's own words behind a conversational opener; every fourth
    # reuses v2's phrasing 2 with a suffix: the kind of reuse `sftgate data check` must report.
    # (No rng here: the gate set's draw below must not depend on v1.)
    openers = {
        "zh": ["", "請問，", "想請教一下：", "我想確認："],
        "en": ["", "Quick question: ", "Could you tell me: ", "One more thing: "],
    }
    while len(v1) < 1000 - len(UNANSWERABLE) // 2:
        fact = facts[extra[k % len(extra)]]
        text = (
            fact.questions[2] + (" Please keep it short." if fact.lang == "en" else "（請簡答）")
            if k % 4 == 0
            else openers[fact.lang][k % 4] + fact.questions[0]
        )
        v1.append(to_question(f"v1-{len(v1):04d}", fact, text))
        k += 1
    for i, (text, lang) in enumerate(UNANSWERABLE):
        target = v1 if i % 2 else v2
        target.append(unanswerable_question(f"{'v1' if i % 2 else 'v2'}-u{i:02d}", text, lang))
    gate_ids = sorted(rng.sample(range(len(v2) - len(UNANSWERABLE) // 2), 97)) + list(
        range(len(v2) - 3, len(v2))
    )
    gate = [v2[i] for i in gate_ids]
    docs_dir = out / "docs"
    (docs_dir / "eval_sets").mkdir(parents=True, exist_ok=True)
    for path, items in (
        (docs_dir / "question_v1.json", v1),
        (docs_dir / "question_v2.json", v2),
        (docs_dir / "eval_sets" / "question_v2_dev100.json", gate),
    ):
        path.write_text(
            "[\n"
            + ",\n".join(json.dumps(q, ensure_ascii=False, sort_keys=True) for q in items)
            + "\n]\n",
            encoding="utf-8",
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temp dir and compare with sftgate/sample",
    )
    args = parser.parse_args()
    if not args.check:
        build(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        cmp = filecmp.dircmp(tmp, OUT)
        bad: list[str] = []

        def walk(c: filecmp.dircmp, prefix: str) -> None:
            bad.extend(prefix + f for f in c.left_only + c.diff_files)
            for name, sub in c.subdirs.items():
                walk(sub, prefix + name + "/")

        walk(cmp, "")
        if bad:
            print("differs from the committed sample:", ", ".join(sorted(bad)[:10]))
            return 1
    print("sftgate/sample matches the generator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
